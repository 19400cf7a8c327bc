"""Benchmark the queue's own overhead; prints JSON.

    python scripts/bench_queue.py [--sizes 1000 10000] [--agents 8]

For each size it builds a fleet of that many task files whose agent runs
`true` (so the runner costs one fork/exec and nothing else), starts N real
`coordinator agent --until-empty` processes at once, and reads back what each
agent measured of itself: the time to claim (lock, reap, catch up, pick, write
claim + record) and the time to record the outcome. The smallest size is the
baseline the others are compared against: claiming must not grow with the queue.

It also times `coordinator tasks` over the largest fleet and
`coordinator --help`, each against `python -c pass` measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLEET = """
[fleet]
default_agent = "noop"
heartbeat_s = 5

[agents.noop]
kind = "command"
command = ["true"]
"""


def make_fleet(root: Path, size: int) -> None:
    """``size`` single-task files and a fleet.toml with a no-op command agent."""
    (root / "tasks").mkdir(parents=True)
    (root / "fleet.toml").write_text(FLEET)
    for n in range(size):
        (root / "tasks" / f"t{n:05d}.toml").write_text(f'prompt = "task {n}"\npriority = {n % 4}\n')


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run_queue(size: int, agents: int) -> dict:
    """Drain a fleet of ``size`` no-op tasks with ``agents`` processes; the agents' own timings."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_fleet(root, size)
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "coordinator", "-C", str(root), "agent", "--id",
                                   f"bench-{n}", "--until-empty"], stderr=subprocess.DEVNULL)
                 for n in range(agents)]
        codes = [p.wait() for p in procs]
        wall_s = time.perf_counter() - started
        claims, tasks, record_ms = [], 0, 0.0
        for path in (root / ".coordinator" / "records").glob("*.json"):
            for attempt in json.loads(path.read_text())["history"]:
                claims.append(attempt["claim_ms"])
        for path in (root / ".coordinator" / "agents").glob("*.json"):
            overhead = json.loads(path.read_text())["overhead"]
            tasks += overhead["tasks"]
            record_ms += overhead["record_ms"]
    done = len(claims)
    return {"tasks": size, "agents": agents, "done": done, "agent_exit_codes_ok": all(c == 0 for c in codes),
            "wall_s": round(wall_s, 2), "claim_ms_p50": round(percentile(claims, 50), 3),
            "claim_ms_p99": round(percentile(claims, 99), 3), "record_ms_mean": round(record_ms / max(tasks, 1), 3),
            "per_task_ms": round(percentile(claims, 50) + record_ms / max(tasks, 1), 3)}


def time_command(argv: list[str], runs: int) -> float:
    """Median wall seconds of ``runs`` runs of ``argv``."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples), 3)


def time_cli(size: int) -> dict:
    """`coordinator tasks` over ``size`` files and `coordinator --help`, against bare Python start-up."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_fleet(root, size)
        cli = [sys.executable, "-m", "coordinator"]
        subprocess.run(cli + ["-C", tmp, "tasks"], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        python_s = time_command([sys.executable, "-c", "pass"], 5)
        tasks_s = time_command(cli + ["-C", tmp, "tasks"], 5)
        help_s = time_command(cli + ["--help"], 5)
        status_s = time_command(cli + ["-C", tmp, "status"], 5)
    return {"python_startup_s": python_s, "tasks_cmd_s": tasks_s, "tasks_files": size, "help_s": help_s,
            "status_s": status_s, "tasks_vs_python_startup": round(tasks_s / python_s, 1),
            "help_vs_python_startup": round(help_s / python_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--agents", type=int, default=8)
    args = parser.parse_args()
    runs = [run_queue(size, args.agents) for size in args.sizes]
    base = runs[0]
    for run in runs[1:]:
        run["per_task_vs_baseline"] = round(run["per_task_ms"] / base["per_task_ms"], 2)
        run["claim_p50_vs_baseline"] = round(run["claim_ms_p50"] / base["claim_ms_p50"], 2)
    print(json.dumps({"queue": runs, "cli": time_cli(max(args.sizes))}, indent=2))


if __name__ == "__main__":
    main()
