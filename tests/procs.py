"""Helpers for tests that drive real coordinator processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import coordinator_argv, subprocess_env

# A command agent's script: records start/end lines in a ledger, and behaves per
# attempt through the environment the runner gives it (COORDINATOR_ATTEMPT).
LEDGER_SCRIPT = r"""#!/bin/sh
# usage: ledger.sh TASK_ID LEDGER [SLEEP_ON_FIRST_ATTEMPT]
# SIGTERM (how a runner is stopped first) is logged, so a stopped run has an end too.
trap 'echo "killed $1 $$ $COORDINATOR_ATTEMPT" >> "$2"; exit 143' TERM
echo "start $1 $$ $COORDINATOR_ATTEMPT" >> "$2"
if [ -n "$3" ] && [ "$COORDINATOR_ATTEMPT" = "1" ]; then
  touch "$2.$1.running"
  sleep "$3"
fi
echo "end $1 $$ $COORDINATOR_ATTEMPT" >> "$2"
"""


def write_ledger_fleet(root: Path, *, lease_s: float = 30, heartbeat_s: float = 0.5, sleep_first: float = 0,
                       grace_s: float = 5) -> Path:
    """fleet.toml with a `sh` command agent that appends to ledger.txt; returns the ledger path."""
    script = root / "ledger.sh"
    script.write_text(LEDGER_SCRIPT)
    ledger = root / "ledger.txt"
    extra = f', "{sleep_first}"' if sleep_first else ""
    (root / "fleet.toml").write_text(f"""
[fleet]
default_agent = "sh"
lease_s = {lease_s}
heartbeat_s = {heartbeat_s}
grace_s = {grace_s}

[agents.sh]
kind = "command"
command = ["sh", "{script}", "{{task_id}}", "{ledger}"{extra}]
""")
    return ledger


def write_tasks(root: Path, count: int, *, prefix: str = "t") -> list[str]:
    """``count`` single-task files; returns their ids."""
    ids = []
    for n in range(count):
        task_id = f"{prefix}{n:04d}"
        (root / "tasks" / f"{task_id}.toml").write_text(f'prompt = "task number {n}"\npriority = {n % 4}\n')
        ids.append(task_id)
    return ids


def start_agent(root: Path, agent_id: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A real ``coordinator agent`` process in its own process group."""
    log = open(root / f"{agent_id}.stderr", "ab")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(coordinator_argv("-C", str(root), "agent", "--id", agent_id, *extra),
                            stdout=log, stderr=log, env=env or subprocess_env(), start_new_session=True)


def run_cli(root: Path, *args: str, timeout: float = 60, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """Run one coordinator command to completion."""
    return subprocess.run(coordinator_argv("-C", str(root), *args), capture_output=True, text=True,
                          timeout=timeout, env=env or subprocess_env())


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def read_ledger(path: Path) -> list[tuple[str, str, int, int]]:
    """(kind, task, pid, attempt) per ledger line."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        kind, task, pid, attempt = line.split()
        out.append((kind, task, int(pid), int(attempt)))
    return out


def assert_no_overlap(entries: list[tuple[str, str, int, int]]) -> None:
    """Every start of a task is followed by its end (or its `killed` line) before that task starts again."""
    open_runs: dict[str, int] = {}
    for kind, task, pid, _ in entries:
        if kind == "start":
            assert task not in open_runs, f"task {task} started again while running"
            open_runs[task] = pid
        elif open_runs.get(task) == pid:
            del open_runs[task]


def record(root: Path, task_id: str) -> dict[str, Any]:
    """A task's record as JSON."""
    return json.loads((root / ".coordinator" / "records" / f"{task_id}.json").read_text())


def events(root: Path) -> list[dict[str, Any]]:
    """Every event in events.jsonl."""
    path = root / ".coordinator" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """End a test process and its group, whatever state it is in."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def claims(root: Path) -> list[dict[str, Any]]:
    """The live claim files of a fleet, as JSON (a file vanishing mid-read is skipped)."""
    out = []
    for path in (root / ".coordinator" / "claims").glob("*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError):
            continue
    return out
