"""Agents pick up changed agent settings at their next claim, and keep the old ones when fleet.toml is broken."""

from __future__ import annotations

import signal

from tests.procs import record, start_agent, stop, wait_for

FLEET = """\
[fleet]
default_agent = "sh"
heartbeat_s = 0.5

[agents.sh]
kind = "command"
command = ["sh", "-c", "echo {version} > out-$1.txt", "sh", "{{task_id}}"]
timeout_s = 30
"""


def _task(root, task_id: str) -> None:
    (root / "tasks" / f"{task_id}.toml").write_text('prompt = "write the version"\n')


def _ran(root, task_id: str) -> str:
    wait_for(lambda: (root / ".coordinator" / "records" / f"{task_id}.json").exists()
             and record(root, task_id)["state"] == "done", 60, f"{task_id} done")
    return (root / f"out-{task_id}.txt").read_text().strip()


def test_a_running_agent_uses_changed_settings_at_its_next_claim_and_refuses_a_broken_file(make_fleet) -> None:
    root = make_fleet(FLEET.format(version="v1"))
    agent = start_agent(root, "agent-1")
    try:
        _task(root, "t1")
        assert _ran(root, "t1") == "v1"
        (root / "fleet.toml").write_text(FLEET.format(version="v2"))
        _task(root, "t2")
        assert _ran(root, "t2") == "v2"
        (root / "fleet.toml").write_text(FLEET.format(version="v3") + "\n[agents.sh.oops\n")
        _task(root, "t3")
        assert _ran(root, "t3") == "v2"  # the broken file is refused; the last good settings stay
    finally:
        stop(agent, signal.SIGTERM)
    stderr = (root / "agent-1.stderr").read_text()
    refusals = [line for line in stderr.splitlines() if "fleet.toml refused" in line]
    assert len(refusals) == 1 and "TOML syntax error" in refusals[0], stderr
