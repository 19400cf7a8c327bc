"""The MCP tools against a live fleet (`coordinator run`, echo backend): waiting, output, cancel, infer, configure."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_support import gateway_info, start_run, wait_until, write_echo_fleet
from tests.mcp_support import call, data, fleet_tools
from tests.procs import stop


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = write_echo_fleet(tmp_path_factory.mktemp("mcp") / "fleet")
    proc = start_run(folder)
    try:
        gateway_info(folder)  # the fleet's gateway is up
        yield folder
    finally:
        stop(proc, signal.SIGTERM)


def wait_to_the_end(root: Path, task_id: str, calls: int = 12) -> dict:
    """wait_task again and again (each call at most 25 s) until the task finished."""
    for _ in range(calls):
        waited = data(call(fleet_tools(root), ("wait_task", {"task_id": task_id}))[0])
        if waited["finished"]:
            return waited
    raise AssertionError(f"{task_id} did not finish: {waited}")


def read_all(root: Path, task_id: str) -> str:
    """read_output from 0, a slice at a time, until eof."""
    text, offset = "", 0
    for _ in range(10_000):
        chunk = data(call(fleet_tools(root), ("read_output", {"task_id": task_id, "offset": offset}))[0])
        text, offset = text + chunk["text"], chunk["next_offset"]
        if chunk["eof"]:
            return text
    raise AssertionError("no eof")


def test_wait_task_follows_a_task_the_fleet_runs_to_done(root: Path) -> None:
    enqueued, = call(fleet_tools(root), ("enqueue", {"tasks": [{"id": "live", "prompt": "Describe a queue briefly"}]}))
    assert data(enqueued)["tasks"][0]["created"]
    waited = wait_to_the_end(root, "live")
    assert waited["state"] == "done" and waited["attempts"] == 1
    output = read_all(root, "live")
    assert output and output == (root / ".coordinator" / "runs" / "live" / "1" / "stdout.log").read_text()
    shown, = call(fleet_tools(root), ("get_task", {"task_id": "live"}))
    assert data(shown)["record"]["state"] == "done" and data(shown)["record"]["usage"]["requests"] >= 1


def test_a_running_task_is_followed_then_cancelled(root: Path) -> None:
    tools = fleet_tools(root)
    call(tools, ("enqueue", {"tasks": [{"id": "slow-one", "prompt": "take your time", "agent": "slow"}]}))
    wait_until(lambda: data(call(tools, ("get_task", {"task_id": "slow-one"}))[0])["state"] == "running",
               what="slow-one running")
    running, = call(tools, ("wait_task", {"task_id": "slow-one", "timeout_s": 0.2}))
    assert data(running)["state"] == "running" and not data(running)["finished"]
    started = wait_until(lambda: data(call(tools, ("read_output", {"task_id": "slow-one"}))[0])["text"],
                         what="the command's first line")
    assert started == "started\n"
    assert not data(call(tools, ("read_output", {"task_id": "slow-one"}))[0])["eof"], "it is still running"
    cancelled, = call(tools, ("cancel_task", {"task_id": "slow-one"}))
    assert data(cancelled) == {"task_id": "slow-one", "state": "cancelled"}
    assert wait_to_the_end(root, "slow-one")["state"] == "cancelled"
    assert "finished" not in read_all(root, "slow-one")  # killed before its last line


def test_infer_goes_through_the_running_gateway_and_is_deduplicated(root: Path) -> None:
    tools = fleet_tools(root)
    before = data(call(tools, ("fleet_status", {}))[0])["gateway"]
    first, second = call(tools, ("infer", {"prompt": "Name one prime number.", "max_tokens": 50}),
                         ("infer", {"prompt": "Name one prime number.", "max_tokens": 50}))
    after = data(call(tools, ("fleet_status", {}))[0])["gateway"]
    assert data(first)["text"] and data(first)["text"] == data(second)["text"]
    assert data(first)["dedup"] == "miss" and data(second)["dedup"] == "hit"
    assert data(first)["usage"]["output_tokens"] > 0 and data(first)["stop_reason"] == "end_turn"
    assert after["requests"] - before["requests"] == 2 and after["upstream_calls"] - before["upstream_calls"] == 1


def test_configure_writes_fleet_toml_and_asks_the_running_gateway_to_reload(root: Path) -> None:
    fragment = '[backends.spare]\nkind = "echo"\n\n[models.spare]\nbackend = "spare"\n'
    result, = call(fleet_tools(root), ("configure", {"fragment": fragment}))
    reload = data(result)["reload"]
    assert data(result)["written"] and reload["status"] == "reloaded", reload
    assert '[backends.spare]\nkind = "echo"' in (root / "fleet.toml").read_text()
    # The gateway took it (from this call, or from its own watch of the file a moment before).
    assert reload["generation"] >= 1 and set(reload["changed"]) <= {"backends.spare", "models"}
    answer, = call(fleet_tools(root), ("infer", {"prompt": "Which backend answers?", "model": "spare"}))
    assert data(answer)["text"] and data(answer)["dedup"] == "miss"
