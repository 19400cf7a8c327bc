"""Benchmark the per-task cost of worktree workspaces; prints JSON.

    python scripts/bench_workspace.py [--files 10000] [--tasks 48] [--agents 8]

It builds one synthetic repository (``--files`` files at depth 4: three levels of
folders, ten to a level) and copies it for each run, so every run starts alike.
Each task's agent writes one new file (``sh -c``), so the runner costs one
fork/exec and the rest is the coordinator's. Measured in the same run:

- ``shared``: the tasks with ``[workspace] mode = "shared"`` (today's behaviour);
- ``worktree``: the same tasks with ``mode = "worktree"`` and no gates; each step
  (create, setup, commit, precheck, gate, land, cleanup) as the agents recorded it
  in their ``workspace_closed`` events, p50 and p99, and their sum per task;
- ``worktree_gate_0s``: the same with a gate that does nothing (``true``), for the
  landing rate when every landing is gated (each gate checks out a worktree);
- ``baseline``: a plain ``git worktree add`` of the same repository, against the
  coordinator's ``worktrees.create`` (lock, exclude, add with a branch), one after
  the other with nothing else running, interleaved so both see the same caches;
  and ``create_from_spare``, the same create when the agent has a spare (its last
  claim's worktree, parked: what every claim but an agent's first one costs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.config import load_config  # noqa: E402  (after the path insert, to run from a checkout)
from coordinator.fleet import worktrees as wt  # noqa: E402

STEPS = ("create", "setup", "commit", "precheck", "gate", "land", "cleanup")
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "bench@localhost"}
FLEET = """
[fleet]
default_agent = "writer"
heartbeat_s = 5

[workspace]
mode = "{mode}"
gates = {gates}

[agents.writer]
kind = "command"
command = ["sh", "-c", "echo \\"$0\\" > \\"new-$0.txt\\"", "{{task_id}}"]
"""


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo``; its stdout."""
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout


def build_repo(repo: Path, files: int) -> None:
    """``files`` small files at depth 4 (d0/d1/d2/f.txt, ten folders a level), one commit on ``main``."""
    repo.mkdir(parents=True)
    per_dir = max(1, files // 1000)
    for n in range(files):
        folder = repo / f"d{n // per_dir // 100 % 10}" / f"d{n // per_dir // 10 % 10}" / f"d{n // per_dir % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{n}.txt").write_text(f"file {n}\n")
    git(repo, "init", "-q", "-b", "main")
    # Pack once, in the foreground, and never in the background: an automatic gc deleting loose
    # objects while the template is copied breaks the copy, and every run starts from the same pack.
    git(repo, "config", "gc.auto", "0")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "synthetic repository")
    git(repo, "gc", "-q")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; 0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    """p50 and p99, in milliseconds."""
    return {"p50_ms": round(percentile(values, 50), 1), "p99_ms": round(percentile(values, 99), 1)}


def make_fleet(template: Path, root: Path, mode: str, gates: str, tasks: int) -> None:
    """A copy of the repository that is a fleet root with ``tasks`` task files (untracked, like a user's)."""
    shutil.copytree(template, root, symlinks=True)
    (root / "fleet.toml").write_text(FLEET.format(mode=mode, gates=gates))
    (root / "tasks").mkdir()
    for n in range(tasks):
        (root / "tasks" / f"t{n:03d}.toml").write_text(f'prompt = "task {n}"\n')


def events(root: Path) -> list[dict]:
    """Every event the fleet wrote."""
    return [json.loads(line) for line in (root / ".coordinator" / "events.jsonl").read_text().splitlines()]


def run_fleet(template: Path, tmp: Path, name: str, *, mode: str, gates: str, tasks: int, agents: int) -> dict:
    """Drain the tasks with ``agents`` real agent processes; what they recorded."""
    root = tmp / name
    make_fleet(template, root, mode, gates, tasks)
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "coordinator", "-C", str(root), "agent", "--id",
                               f"bench-{n}", "--until-empty"], stderr=subprocess.DEVNULL) for n in range(agents)]
    codes = [p.wait() for p in procs]
    wall_s = time.perf_counter() - started
    records = [json.loads(p.read_text()) for p in (root / ".coordinator" / "records").glob("*.json")]
    runs = [r["history"][-1]["run_ms"] for r in records if r["history"]]
    result = {"tasks": tasks, "agents": agents, "done": sum(r["state"] == "done" for r in records),
              "agent_exit_codes_ok": all(c == 0 for c in codes), "wall_s": round(wall_s, 2),
              "tasks_per_s": round(tasks / wall_s, 2), "run": summary(runs)}
    if mode == "worktree":
        closed = [e for e in events(root) if e["event"] == "workspace_closed"]
        steps = {s: [e["steps_ms"].get(s, 0.0) for e in closed] for s in STEPS}
        result["landed"] = sum(bool(e["landed"]) for e in closed)
        result["steps"] = {s: summary(v) for s, v in steps.items()}
        result["overhead"] = summary([sum(e["steps_ms"].values()) for e in closed])
        result["landings_per_s"] = round(result["landed"] / wall_s, 2)
    shutil.rmtree(root, ignore_errors=True)
    return result


def baseline(template: Path, tmp: Path, samples: int) -> dict:
    """Plain ``git worktree add`` against ``worktrees.create``, interleaved, one at a time."""
    root = tmp / "baseline"
    make_fleet(template, root, "worktree", "[]", 0)
    config = load_config(root)
    plain, ours, reused = [], [], []
    for n in range(samples):
        path = tmp / f"plain-{n}"
        started = time.perf_counter()
        git(root, "worktree", "add", "--quiet", "--detach", str(path), "main")
        plain.append((time.perf_counter() - started) * 1000)
        git(root, "worktree", "remove", "--force", str(path))
        started = time.perf_counter()
        ws = wt.create(config, f"b{n}", 1)
        ours.append((time.perf_counter() - started) * 1000)
        wt.remove_worktree(ws.repo, ws.path, branch=ws.branch)
        # An agent's next claim: its last worktree, parked as a spare, moved and switched (spares.py).
        wt.release(wt.create(config, f"s{n}", 1, agent="bench"), landed=False)
        started = time.perf_counter()
        ws = wt.create(config, f"r{n}", 1, agent="bench")
        reused.append((time.perf_counter() - started) * 1000)
        wt.release(ws, landed=False)
        wt.discard_spares(config, "bench", print)
    shutil.rmtree(root, ignore_errors=True)
    return {"samples": samples, "git_worktree_add": summary(plain), "coordinator_create": summary(ours),
            "create_over_plain_p50": round(percentile(ours, 50) / percentile(plain, 50), 3),
            "create_from_spare": summary(reused),
            "create_from_spare_over_plain_p50": round(percentile(reused, 50) / percentile(plain, 50), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=48)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--samples", type=int, default=15, help="plain worktree adds for the baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        template = tmp / "template"
        started = time.perf_counter()
        build_repo(template, args.files)
        report: dict = {"repository": {"files": args.files, "depth": 4,
                                       "build_s": round(time.perf_counter() - started, 2)},
                        "cpus": os.cpu_count()}
        report["baseline"] = baseline(template, tmp, args.samples)
        common = {"tasks": args.tasks, "agents": args.agents}
        report["shared"] = run_fleet(template, tmp, "shared", mode="shared", gates="[]", **common)
        report["worktree"] = run_fleet(template, tmp, "worktree", mode="worktree", gates="[]", **common)
        report["worktree_gate_0s"] = run_fleet(template, tmp, "gated", mode="worktree", gates='[["true"]]', **common)
    report["run_p50_over_shared_ms"] = round(report["worktree"]["run"]["p50_ms"] - report["shared"]["run"]["p50_ms"],
                                             1)
    report["targets"] = {
        "create_within_plain_plus_20pct": report["baseline"]["create_over_plain_p50"] <= 1.2,
        "overhead_p50_under_1500ms": report["worktree"]["overhead"]["p50_ms"] < 1500}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
