"""Workspaces with real git repositories and real agent processes: isolation, landing, conflicts, gates.

Each command agent is a small shell script run in its claim's worktree; the
target is ``main``, checked out in the primary worktree (the fleet root), as a
user's repository would be.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.procs import events, record, run_cli
from tests.ws_support import add_tasks, branches, first_parent, git, make_repo_fleet, run_agents, worktrees

OWN_FILE = """
echo "$1" > "out-$1.txt"
git status --porcelain > "$COORDINATOR_RUN_DIR/status.txt"
"""


def test_six_agents_land_thirty_tasks_each_once_in_isolation(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", OWN_FILE)
    ids = [f"t{n:02d}" for n in range(30)]
    add_tasks(root, ids)
    run_agents(root, 6, timeout=120)
    landings = [s for s in first_parent(root) if s.startswith("Land ")]
    assert sorted(s.split(":")[0].removeprefix("Land ") for s in landings) == ids  # one landing per task
    for task_id in ids:
        rec = record(root, task_id)
        assert rec["state"] == "done" and rec["landed"] and rec["conflicts"] == 0
        git(root, "merge-base", "--is-ancestor", rec["tip"], "main")  # raises unless the tip is on main
        assert (root / f"out-{task_id}.txt").read_text() == f"{task_id}\n"  # the clean checkout moved along
        status = (root / ".coordinator" / "runs" / task_id / str(rec["epoch"]) / "status.txt").read_text()
        assert status.splitlines() == [f"?? out-{task_id}.txt"]  # it saw its own change and nothing else
    assert worktrees(root) == [str(root)]
    assert branches(root) == []
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""


RESOLVER = """
echo "start $1 ${COORDINATOR_CONFLICT_FILE:-none}" >> "$COORDINATOR_RUN_DIR/../../../../ledger.txt"
echo "$2" > "$COORDINATOR_RUN_DIR/conflict-arg.txt"
if [ -n "$COORDINATOR_CONFLICT_FILE" ]; then
  path=$(grep '^- ' "$COORDINATOR_CONFLICT_FILE" | head -n 1 | cut -c3-)
  echo "$path" > "$COORDINATOR_RUN_DIR/conflicted-path.txt"
  echo "$(cat "$path") and $1" > "$path"
  exit 0
fi
touch "../$1.ready"
for i in $(seq 1 200); do [ -e "../a-e1.ready" ] && [ -e "../b-e1.ready" ] && break; sleep 0.05; done
echo "value from $1" > shared.txt
"""


def test_conflict_requeues_with_context_and_the_rerun_lands(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", RESOLVER, files={"shared.txt": "original\n"})
    fleet = root / "fleet.toml"  # the command also gets the {conflict_file} placeholder
    fleet.write_text(fleet.read_text().replace('"{task_id}"]', '"{task_id}", "{conflict_file}"]'))
    add_tasks(root, ["a", "b"])
    run_agents(root, 2)
    recs = {t: record(root, t) for t in ("a", "b")}
    assert all(r["state"] == "done" and r["landed"] for r in recs.values())
    first, second = sorted(recs, key=lambda t: recs[t]["conflicts"])
    assert (recs[first]["conflicts"], recs[second]["conflicts"]) == (0, 1)
    assert recs[second]["attempts"] == 1  # a conflict spends no attempt
    assert [h["outcome"] for h in recs[second]["history"]] == ["conflict", "landed"]
    run = root / ".coordinator" / "runs" / second / str(recs[second]["epoch"])
    assert (run / "conflicted-path.txt").read_text().strip() == "shared.txt"
    assert (run / "conflict-arg.txt").read_text().strip() == str(run / "conflict.md")
    first_run = root / ".coordinator" / "runs" / first / str(recs[first]["epoch"])
    assert (first_run / "conflict-arg.txt").read_text() == "\n"  # no conflict, an empty placeholder
    context = (run / "conflict.md").read_text()
    assert "- shared.txt" in context and f"work on {first} ({first})" in context and f"value from {second}" in context
    assert (root / "shared.txt").read_text() == f"value from {first} and {second}\n"
    assert [s.split(":")[0] for s in first_parent(root)[:2]] == [f"Land {second}", f"Land {first}"]
    events = [json.loads(line)["event"] for line in (root / ".coordinator" / "events.jsonl").read_text().splitlines()]
    assert events.count("conflict") == 1 and events.count("landed") == 2


ALWAYS_CONFLICTS = """
primary="$COORDINATOR_RUN_DIR/../../../.."
echo "theirs $COORDINATOR_BRANCH" > "$primary/shared.txt"
git -C "$primary" commit -qam "a user edits shared.txt meanwhile"
echo "mine $COORDINATOR_BRANCH" > shared.txt
"""


def test_a_task_that_always_conflicts_fails_after_max_conflicts_and_keeps_its_branch(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", ALWAYS_CONFLICTS, workspace="max_conflicts = 1",
                           files={"shared.txt": "original\n"})
    add_tasks(root, ["c"])
    run_agents(root, 1)
    rec = record(root, "c")
    assert rec["state"] == "failed" and rec["conflicts"] == 2 and rec["landed"] is None
    assert "max_conflicts" in rec["last_error"]
    assert set(branches(root)) == {"coordinator/c/e1", "coordinator/c/e2"}  # unlanded work is kept
    assert git(root, "show", "coordinator/c/e2:shared.txt") == "mine coordinator/c/e2"
    assert not any(s.startswith("Land ") for s in first_parent(root))


TWO_FILES = """
echo "$1" > "part-$1.txt"
touch "../$1.ready"
for i in $(seq 1 200); do [ -e "../g1-e1.ready" ] && [ -e "../g2-e1.ready" ] && break; sleep 0.05; done
"""
AT_MOST_ONE_PART = '["sh", "-c", "test $(ls part-*.txt 2>/dev/null | wc -l) -le 1 || { echo too many parts; exit 1; }"]'


def test_the_gate_runs_on_the_merged_result_and_a_red_gate_requeues(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", TWO_FILES,
                           workspace=f"gates = [{AT_MOST_ONE_PART}]\nmax_conflicts = 0")
    add_tasks(root, ["g1", "g2"], acceptance=AT_MOST_ONE_PART)
    run_agents(root, 2)
    recs = {t: record(root, t) for t in ("g1", "g2")}
    landed = [t for t in recs if recs[t]["state"] == "done"]
    assert len(landed) == 1  # each passed its own acceptance; together they break the gate
    other = ({"g1", "g2"} - set(landed)).pop()
    assert recs[other]["state"] == "failed" and recs[other]["history"][-1]["outcome"] == "gate_failed"
    context = (root / ".coordinator" / "runs" / other / str(recs[other]["epoch"]) / "conflict.md").read_text()
    assert "too many parts" in context
    for commit in git(root, "rev-list", "--first-parent", "main").splitlines():
        names = git(root, "ls-tree", "--name-only", commit).splitlines()
        assert sum(n.startswith("part-") for n in names) <= 1  # the target never held a red commit
    assert branches(root) == [f"coordinator/{other}/e1"]
    assert worktrees(root) == [str(root)]  # the gate worktrees went with their claims


def test_a_dirty_user_checkout_holds_the_landing_until_it_is_committed(tmp_path: Path) -> None:
    from coordinator.clock import poll
    from tests.procs import start_agent, stop

    root = make_repo_fleet(tmp_path / "repo", OWN_FILE)
    (root / "README").write_text("the user's unsaved edit\n")
    add_tasks(root, ["u"])
    agent = start_agent(root, "a0", "--until-empty")
    try:
        held = None
        for _ in poll(0.05, timeout_s=30):
            report = json.loads(run_cli(root, "status", "--json").stdout)
            held = report["merge_queue"]["held"]
            if held:
                break
        assert held and held["task"] == "u" and "uncommitted" in held["reason"] and "README" in held["reason"]
        assert (root / "README").read_text() == "the user's unsaved edit\n"
        assert record(root, "u")["state"] == "running" and not (root / "out-u.txt").exists()
        git(root, "commit", "-qam", "the user commits")
        agent.wait(timeout=30)
    finally:
        stop(agent)
    assert record(root, "u")["state"] == "done"
    assert (root / "out-u.txt").read_text() == "u\n" and (root / "README").read_text() == "the user's unsaved edit\n"
    report = json.loads(run_cli(root, "status", "--json").stdout)
    assert report["merge_queue"]["landed"] == 1 and report["merge_queue"]["last_landed"]["task"] == "u"


def test_coordinator_run_lands_every_task_and_status_shows_the_merge_queue(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", OWN_FILE)
    add_tasks(root, ["r1", "r2", "r3", "r4"])
    result = run_cli(root, "run", "-n", "2", "--until-empty", "--no-dashboard", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for task_id in ("r1", "r2", "r3", "r4"):  # a landing is the task's outcome line in the plain view
        assert f"] {task_id} done (attempt 1" in result.stdout, result.stdout
    queue = json.loads(run_cli(root, "status", "--json").stdout)["merge_queue"]
    assert set(queue) == {"waiting", "gating", "held", "landed", "conflicts", "last_landed"}
    assert (queue["waiting"], queue["gating"], queue["held"], queue["landed"], queue["conflicts"]) == \
        (0, None, None, 4, 0)
    assert queue["last_landed"]["commit"] == git(root, "rev-parse", "main")
    shown = run_cli(root, "show", "r1").stdout
    assert "branch coordinator/r1/e1" in shown and "conflicts 0" in shown
    assert worktrees(root) == [str(root)] and branches(root) == []
    landed = [record(root, t)["history"][-1] for t in ("r1", "r2", "r3", "r4")]
    assert all(h["outcome"] == "landed" and h["run_ms"] > 0 and "claim_ms" in h for h in landed)  # this run's own
    closed = [e for e in events(root) if e["event"] == "workspace_closed"]
    assert sorted(e["task"] for e in closed) == ["r1", "r2", "r3", "r4"] and all(e["landed"] for e in closed)
    assert all(set(e["steps_ms"]) >= {"create", "commit", "precheck", "gate", "land", "cleanup"} for e in closed)


def test_land_none_keeps_each_branch_and_leaves_the_target_alone(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", OWN_FILE, workspace='land = "none"')
    before = git(root, "rev-parse", "main")
    add_tasks(root, ["k1", "k2"])
    run_agents(root, 2)
    assert git(root, "rev-parse", "main") == before and not (root / "out-k1.txt").exists()
    for task_id in ("k1", "k2"):
        rec = record(root, task_id)
        assert rec["state"] == "done" and rec["landed"] is None and rec["branch"] == f"coordinator/{task_id}/e1"
        assert git(root, "show", f"{rec['branch']}:out-{task_id}.txt") == task_id  # the work is on its branch
        assert git(root, "rev-parse", rec["branch"]) == rec["tip"]
    assert sorted(branches(root)) == ["coordinator/k1/e1", "coordinator/k2/e1"]
    assert worktrees(root) == [str(root)]
    assert run_cli(root, "gc").returncode == 0
    assert sorted(branches(root)) == ["coordinator/k1/e1", "coordinator/k2/e1"]  # gc deletes landed branches only


SETUP_AND_COPY = """
cp "$COORDINATOR_RUN_DIR/../../../claims/$1.json" "$COORDINATOR_RUN_DIR/claim.json"
cat .env > "$COORDINATOR_RUN_DIR/env-seen.txt"
cat setup-ran.txt > "$COORDINATOR_RUN_DIR/setup-seen.txt"
rm setup-ran.txt
echo "$1" > "out-$1.txt"
"""


def test_copy_and_setup_prepare_each_worktree_and_the_base_is_on_the_claim(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", SETUP_AND_COPY,
                           workspace='copy = [".env"]\nsetup = ["sh", "-c", "pwd > setup-ran.txt"]')
    (root / ".env").write_text("SECRET=untracked\n")  # untracked in the primary checkout
    base = git(root, "rev-parse", "main")
    add_tasks(root, ["s1"])
    run_agents(root, 1)
    rec = record(root, "s1")
    assert rec["state"] == "done" and rec["landed"], rec
    run = root / ".coordinator" / "runs" / "s1" / "1"
    assert (run / "env-seen.txt").read_text() == "SECRET=untracked\n"
    assert (run / "setup-seen.txt").read_text().strip() == str(root / ".coordinator" / "worktrees" / "s1-e1")
    claim = json.loads((run / "claim.json").read_text())
    assert (claim["base"], claim["branch"], claim["epoch"]) == (base, "coordinator/s1/e1", 1)
    assert rec["base"] == base
    assert git(root, "ls-tree", "-r", "--name-only", "main").split() == ["README", "out-s1.txt"]  # no .env


def test_a_failing_setup_fails_the_attempt_and_keeps_nothing_behind(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", OWN_FILE, workspace='setup = ["sh", "-c", "echo no deps; exit 3"]')
    add_tasks(root, ["s2"], max_attempts="1")
    run_agents(root, 1)
    rec = record(root, "s2")
    assert rec["state"] == "failed" and "workspace setup 'sh'" in rec["last_error"] and rec["landed"] is None
    assert not (root / "out-s2.txt").exists() and worktrees(root) == [str(root)]


def test_land_squash_puts_one_single_parent_commit_per_task_on_the_target(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", OWN_FILE, workspace='land = "squash"')
    add_tasks(root, ["q1", "q2"])
    run_agents(root, 1)
    subjects = first_parent(root)
    assert sorted(s.split(":")[0] for s in subjects[:2]) == ["Land q1", "Land q2"] and subjects[2] == "init"
    for commit in git(root, "rev-list", "--max-count=2", "main").splitlines():
        assert len(git(root, "rev-list", "--parents", "-n", "1", commit).split()) == 2  # itself and one parent
    for task_id in ("q1", "q2"):
        rec = record(root, task_id)
        assert rec["state"] == "done" and (root / f"out-{task_id}.txt").read_text() == f"{task_id}\n"
        tip_on_main = subprocess.run(["git", "merge-base", "--is-ancestor", rec["tip"], "main"], cwd=root)
        assert tip_on_main.returncode == 1  # squashed: the branch's own commits are not on the target
    assert branches(root) == []
