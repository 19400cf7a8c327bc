"""The task API against a live fleet (`coordinator run`, echo backend), with httpx and a raw SSE reader."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from coordinator.config import load_config
from coordinator.queue.ops import set_paused
from tests.api_support import API, RawSSE, gateway_info, start_run, wait_until, write_echo_fleet
from tests.procs import run_cli, stop

LONG_PROMPT = "Describe " + " ".join(f"step{n}" for n in range(60))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = write_echo_fleet(tmp_path_factory.mktemp("api") / "fleet")
    proc = start_run(root)
    try:
        yield _Fleet(root)
    finally:
        stop(proc, signal.SIGTERM)


class _Fleet(dict):
    """The fleet's API as a client finds it: from gateway.json, read again on each use, since `run`
    starts its gateway again (on a new port) when a health check fails on a loaded machine."""

    def __init__(self, root: Path) -> None:
        super().__init__(root=root)

    def __getitem__(self, key: str) -> Any:
        if key == "root":
            return super().__getitem__(key)
        info = gateway_info(self["root"])
        if key == "client":
            return httpx.Client(base_url=info["url"], headers={"authorization": f"Bearer {info['token']}"},
                                timeout=30)
        return info[key]


def stream(fleet: dict[str, Any], task_id: str, last_event_id: str | None = None) -> RawSSE:
    reader = RawSSE(fleet["url"], f"{API}/tasks/{task_id}/events", fleet["token"], last_event_id=last_event_id)
    assert reader.status == 200
    return reader


def summary(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """What a stream said, independent of how output was cut into chunks."""
    return {"states": [f["data"]["state"] for f in frames if f["event"] == "state"],
            "output": "".join(f["data"]["text"] for f in frames if f["event"] == "output"),
            "usage": [f["data"] for f in frames if f["event"] == "usage"],
            "end": [f["data"] for f in frames if f["event"] == "end"]}


def test_enqueued_task_runs_and_its_stream_ends_done(fleet: dict[str, Any]) -> None:
    response = fleet["client"].post(f"{API}/tasks", json={"id": "hello", "prompt": "Say hello to the fleet"})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"{API}/tasks/hello"
    assert response.json()["task_id"] == "hello" and response.json()["state"] in ("pending", "running")
    frames = stream(fleet, "hello").until("end")
    said = summary(frames)
    assert said["states"][-1] == "done" and "running" in said["states"]
    log = (fleet["root"] / ".coordinator" / "runs" / "hello" / "1" / "stdout.log").read_text()
    assert said["output"] == log and log.startswith("echo: Say hello to the fleet")
    assert said["end"] == [{"state": "done"}]
    assert said["usage"] == [{"usage": fleet["client"].get(f"{API}/tasks/hello").json()["record"]["usage"],
                              "attempts": 1}]
    assert len({f["id"] for f in frames}) == len(frames), "every frame has its own id"


def test_reconnect_with_last_event_id_loses_and_repeats_nothing(fleet: dict[str, Any]) -> None:
    config = load_config(fleet["root"])
    set_paused(config, True)  # both streams must start from the same state
    try:
        created = fleet["client"].post(f"{API}/tasks", json={"id": "resume", "prompt": LONG_PROMPT})
        assert created.status_code == 202
        full, split = stream(fleet, "resume"), stream(fleet, "resume")
        first_full, first_split = next(full.frames()), next(split.frames())
        assert first_full["data"]["state"] == first_split["data"]["state"] == "pending"
    finally:
        set_paused(config, False)
    before = [first_split, *split.until("output")]  # hang up mid-run, right after the first output
    split.close()
    after = stream(fleet, "resume", last_event_id=before[-1]["id"]).until("end")
    whole = [first_full, *full.until("end")]
    assert summary(before + after) == summary(whole)
    assert summary(whole)["end"] == [{"state": "done"}] and len(summary(whole)["output"]) > 100
    assert not {f["id"] for f in before} & {f["id"] for f in after}, "no frame is sent twice"
    ended = httpx.get(f"{fleet['url']}{API}/tasks/resume/events", headers={
        "authorization": f"Bearer {fleet['token']}", "last-event-id": after[-1]["id"]})
    assert ended.status_code == 204, "after `end`, a reconnect is told the stream is over"


def test_cancel_kills_the_running_task_and_ends_its_stream_cancelled(fleet: dict[str, Any]) -> None:
    root: Path = fleet["root"]
    created = fleet["client"].post(f"{API}/tasks", json={"id": "sleepy", "prompt": "sleep", "agent": "slow"})
    assert created.status_code == 202
    reader = stream(fleet, "sleepy")
    seen = []
    for frame in reader.frames():
        seen.append(frame)
        if frame["event"] == "output" and "started" in frame["data"]["text"]:
            break
    pid = int(wait_until(lambda: (root / "sleepy.pid").read_text().strip() if (root / "sleepy.pid").exists()
                         else None, what="the task's pid"))
    assert psutil.pid_exists(pid)
    cancelled = fleet["client"].post(f"{API}/tasks/sleepy/cancel")
    assert cancelled.status_code == 200 and cancelled.json() == {"task_id": "sleepy", "state": "cancelled"}
    rest = reader.until("end")
    assert rest[-1]["data"] == {"state": "cancelled"}
    assert "cancelled" in summary(rest)["states"]
    wait_until(lambda: not _alive(pid), 15, "the cancelled task's process to die")
    assert fleet["client"].post(f"{API}/tasks/sleepy/cancel").status_code == 409, "already cancelled"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_status_and_show_match_the_cli(fleet: dict[str, Any]) -> None:
    status = fleet["client"].get(f"{API}/status")
    assert status.status_code == 200
    cli = run_cli(fleet["root"], "status", "--json")
    assert set(status.json()) == set(json.loads(cli.stdout))
    assert status.json()["gateway"]["running"] is True
    fleet["client"].post(f"{API}/tasks", json={"id": "shown", "prompt": "show me"})
    wait_until(lambda: fleet["client"].get(f"{API}/tasks/shown").json()["state"] == "done", what="shown done")
    show = json.loads(run_cli(fleet["root"], "show", "shown", "--json").stdout)
    assert fleet["client"].get(f"{API}/tasks/shown").json() == show
    rows = json.loads(run_cli(fleet["root"], "tasks", "--json").stdout)
    assert fleet["client"].get(f"{API}/tasks", params={"limit": 1000}).json()["tasks"] == rows
