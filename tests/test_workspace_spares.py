"""Spare checkouts: an agent reuses its worktree from one claim to the next, and isolation still holds.

Real git repositories and real agent processes. Each run records, before it
writes anything, the inode of a file no task changes (the same inode means the
checkout was reused, not written afresh), everything ``git status --ignored``
shows (a clean tree shows nothing), and which earlier tasks' files it sees.
"""

from __future__ import annotations

import json
from pathlib import Path

from coordinator.config import load_config
from coordinator.fleet import worktrees as wt
from tests.procs import events, record, run_cli
from tests.ws_support import add_tasks, branches, git, make_repo_fleet, run_agents, worktrees

RECORDING = """
stat -c %i README > "$COORDINATOR_RUN_DIR/inode.txt"
git status --porcelain --ignored > "$COORDINATOR_RUN_DIR/status.txt"
ls out-*.txt 2>/dev/null > "$COORDINATOR_RUN_DIR/seen.txt" || true
echo "$1" > "out-$1.txt"
echo "scratch of $1" > "scratch-$1.log"
mkdir -p "build-$1" && echo junk > "build-$1/junk.txt"
if [ "$1" = "broken" ]; then echo "half done" > "half-$1.txt"; exit 1; fi
"""


def run_file(root: Path, task_id: str, name: str) -> str:
    """A file the task's (only) run wrote in its run directory."""
    [path] = (root / ".coordinator" / "runs" / task_id).glob(f"*/{name}")
    return path.read_text()


def test_one_agent_reuses_its_checkout_and_each_claim_still_starts_clean(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", RECORDING, files={".gitignore": "*.log\nbuild-*/\n"})
    ids = ["t1", "t2", "t3", "t4"]
    add_tasks(root, ids)
    run_agents(root, 1)
    inodes = {run_file(root, t, "inode.txt") for t in ids}
    assert len(inodes) == 1  # the same README file all along: the checkout was moved, not rewritten
    for task_id in ids:
        assert record(root, task_id)["landed"]
        assert run_file(root, task_id, "status.txt") == ""  # no earlier run's untracked or ignored file
    seen = sorted(len(run_file(root, t, "seen.txt").split()) for t in ids)
    assert seen == [0, 1, 2, 3]  # and every claim started from the target with the earlier landings
    closed = [e for e in events(root) if e["event"] == "workspace_closed"]
    assert len(closed) == 4 and all(e["landed"] for e in closed)
    # The agent deleted its spare as it stopped: no checkout and no branch is left behind.
    assert worktrees(root) == [str(root)] and branches(root) == []
    assert not any((root / ".coordinator" / "worktrees").glob(".spare/*"))


def test_a_failed_claims_work_is_salvaged_before_its_checkout_is_reused(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", RECORDING, files={".gitignore": "*.log\nbuild-*/\n"})
    add_tasks(root, ["broken"], priority="0", max_attempts="1")
    add_tasks(root, ["after"], priority="5")
    run_agents(root, 1)
    assert record(root, "broken")["state"] == "failed" and record(root, "after")["landed"]
    assert run_file(root, "broken", "inode.txt") == run_file(root, "after", "inode.txt")  # reused
    assert run_file(root, "after", "status.txt") == ""  # none of the failed claim's files
    [ref] = git(root, "for-each-ref", "--format=%(refname)", "refs/coordinator/salvage/broken").splitlines()
    assert git(root, "show", f"{ref}:half-broken.txt") == "half done"  # kept, not lost to the reuse
    assert "half-broken.txt" not in git(root, "ls-tree", "--name-only", "main").split()


def test_gc_removes_spares_and_dry_run_only_names_them(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", RECORDING, files={".gitignore": "*.log\nbuild-*/\n"})
    add_tasks(root, ["t1"])
    # A kill -9 leaves the spare behind (the agent never reached its exit path); make one as it would.
    config = load_config(root)
    ws = wt.create(config, "t1", 1, agent="a0")
    wt.commit_all(ws, "work")
    assert wt.release(ws, landed=False)
    spare = root / ".coordinator" / "worktrees" / ".spare" / "a0"
    assert (spare / "README").exists() and str(spare) in worktrees(root)
    dry = json.loads(run_cli(root, "gc", "--dry-run", "--json").stdout)
    assert dry["spares_removed"] == [str(spare)] and spare.exists()
    done = json.loads(run_cli(root, "gc", "--json").stdout)
    assert done["spares_removed"] == [str(spare)]
    assert not spare.exists() and worktrees(root) == [str(root)]
    assert branches(root) == ["coordinator/t1/e1"]  # its unlanded branch stays


def test_a_worktree_with_changes_that_cannot_be_committed_is_kept_not_parked(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", RECORDING)
    ws = wt.create(load_config(root), "t1", 1, agent="a0")
    (ws.path / "unsaved.txt").write_text("not committed\n")
    assert not wt.release(ws, landed=False)
    assert (ws.path / "unsaved.txt").read_text() == "not committed\n"  # nothing deleted
    assert not (root / ".coordinator" / "worktrees" / ".spare" / "a0").exists()
    # With the work committed, the same worktree is parked, and the next claim takes it.
    wt.commit_all(ws, "work")
    assert wt.release(ws, landed=False)
    again = wt.create(load_config(root), "t2", 1, agent="a0")
    assert again.path.name == "t2-e1" and not (again.path / "unsaved.txt").exists()
    assert git(again.path, "rev-parse", "--abbrev-ref", "HEAD") == "coordinator/t2/e1"
    assert git(root, "show", "coordinator/t1/e1:unsaved.txt") == "not committed"
