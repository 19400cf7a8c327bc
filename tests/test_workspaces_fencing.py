"""Workspaces under failure: a paused agent's landing is refused, a killed agent's work is salvaged by gc."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from coordinator.clock import poll
from tests.procs import events, record, run_cli, start_agent, stop
from tests.ws_support import add_tasks, first_parent, git, make_repo_fleet, worktrees

WRITE_OWN = """
echo "$1 from $COORDINATOR_BRANCH" > "out-$1.txt"
"""
# The gate stops its own agent once, after the run and before the landing: a pause at the worst moment.
PAUSING_GATE = """
if [ ! -e "{root}/paused-pid" ]; then echo $PPID > "{root}/paused-pid"; kill -STOP $PPID; fi
exit 0
"""


def wait_until(predicate, timeout_s: float = 30, what: str = "condition"):  # noqa: ANN001, ANN201
    """Poll ``predicate`` with the code base's one wait loop; its value, or fail naming ``what``."""
    for _ in poll(0.05, timeout_s=timeout_s):
        if value := predicate():
            return value
    raise AssertionError(f"timed out waiting for {what}")


def test_a_paused_agent_is_reclaimed_and_its_late_landing_refused(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "gate.sh").write_text(PAUSING_GATE.format(root=root))
    make_repo_fleet(root / "r", WRITE_OWN, fleet="lease_s = 2",
                    workspace=f'gates = [["sh", "{root / "gate.sh"}"]]')
    root = root / "r"
    add_tasks(root, ["f"])
    agents = [start_agent(root, f"a{n}") for n in range(2)]
    try:
        pid = int(wait_until(lambda: (tmp_path / "repo" / "paused-pid").exists()
                             and (tmp_path / "repo" / "paused-pid").read_text().strip(), what="the gate's pause"))
        rec = wait_until(lambda: record(root, "f") if record(root, "f")["state"] == "done" else None,
                         what="the takeover's landing")
        assert rec["epoch"] == 2 and rec["landed"]
        os.kill(pid, signal.SIGCONT)
        fenced = wait_until(lambda: [e for e in events(root) if e["event"] == "land_fenced"], what="land_fenced")
        assert fenced[0]["task"] == "f" and fenced[0]["epoch"] == 1
    finally:
        for agent in agents:
            stop(agent, signal.SIGTERM)
    assert [s for s in first_parent(root) if s.startswith("Land ")] == ["Land f: work on f"]
    stale_tip = git(root, "rev-parse", "refs/coordinator/salvage/f/1")  # the stale epoch's work, kept
    assert git(root, "show", f"{stale_tip}:out-f.txt") == "f from coordinator/f/e1"
    assert stale_tip not in git(root, "rev-list", "main").splitlines()  # nothing of epoch 1 on the target
    assert git(root, "show", "main:out-f.txt") == "f from coordinator/f/e2"
    assert record(root, "f")["landed"] == git(root, "rev-parse", "main")


SLOW_FIRST = """
if [ "${COORDINATOR_BRANCH##*/}" = "e1" ]; then
  echo "half done" > wip.txt
  touch "$COORDINATOR_RUN_DIR/../../../../k-running"
  sleep 30
fi
echo "finished" > done.txt
"""


def test_kill_9_mid_run_lands_once_and_gc_salvages_the_orphan(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", SLOW_FIRST)
    add_tasks(root, ["k"])
    first = start_agent(root, "a1")
    try:
        claim = root / ".coordinator" / "claims" / "k.json"
        wait_until(lambda: (root / "k-running").exists() and json.loads(claim.read_text()).get("child_pid"),
                   what="the first run, with its runner noted on the claim")
    finally:
        stop(first)  # kill -9
    dry = json.loads(run_cli(root, "gc", "--dry-run", "--json").stdout)
    assert dry["removed"] == [str(root / ".coordinator" / "worktrees" / "k-e1")] and dry["salvaged"] == []
    assert (root / ".coordinator" / "worktrees" / "k-e1" / "wip.txt").exists()  # a dry run changes nothing
    result = run_cli(root, "gc", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["salvaged"][0]["ref"] == "refs/coordinator/salvage/k/1"
    assert git(root, "show", "refs/coordinator/salvage/k/1:wip.txt") == "half done"
    assert worktrees(root) == [str(root)]
    second = start_agent(root, "a2", "--until-empty")
    try:
        assert second.wait(timeout=60) == 0
    finally:
        stop(second)
    rec = record(root, "k")
    assert rec["state"] == "done" and rec["epoch"] == 2
    assert [s for s in first_parent(root) if s.startswith("Land ")] == ["Land k: work on k"]
    assert git(root, "show", "main:done.txt") == "finished"
    assert "wip.txt" not in git(root, "ls-tree", "--name-only", "main").splitlines()
    assert any(e["event"] == "salvaged" and e["task"] == "k" for e in events(root))
    assert worktrees(root) == [str(root)]
