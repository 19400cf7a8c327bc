"""Benchmark `coordinator run` as a whole; prints JSON.

    python scripts/bench_fleet.py [--tasks 200] [--agents 8] [--status-tasks 10000]

* start to first claim: wall time from launching `coordinator run` to the first
  `claimed` event, against bare `python -c pass` start-up in the same run;
* `coordinator status` over a fleet of 10,000 task files (median of 5);
* RSS of each agent process, sampled while an echo fleet runs (llm agents);
* fleet overhead: 200 echo tasks at 0 latency with 8 agents — total wall time
  against the sum of the time agents spent inside runners.
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

import psutil

FLEET = """
[fleet]
heartbeat_s = 1

[backends.default]
kind = "echo"
latency_ms = 0

[agents.llm]
kind = "llm"
shared_context = ["context/*.md"]
"""


def make_fleet(root: Path, tasks: int) -> None:
    """An echo fleet with shared context and ``tasks`` distinct tasks."""
    (root / "tasks").mkdir(parents=True)
    (root / "context").mkdir()
    (root / "fleet.toml").write_text(FLEET)
    (root / "context" / "guide.md").write_text("Shared guidance for every task. " * 400)
    for n in range(tasks):
        (root / "tasks" / f"t{n:05d}.toml").write_text(f'prompt = "task {n}: summarize the guide"\n')


def first_claim_s(root: Path, started_wall: float) -> float | None:
    """Seconds from launch to the first `claimed` event, if any."""
    path = root / ".coordinator" / "events.jsonl"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "claimed":
            return event["ts"] - started_wall
    return None


def agent_rss_mb(root: Path) -> list[float]:
    """Current RSS of every live agent process, in MB."""
    out = []
    for path in (root / ".coordinator" / "agents").glob("*.json"):
        try:
            out.append(psutil.Process(json.loads(path.read_text())["pid"]).memory_info().rss / 2**20)
        except (psutil.NoSuchProcess, ValueError, KeyError, FileNotFoundError):
            continue
    return out


def run_fleet(tasks: int, agents: int) -> dict:
    """One echo run: start-to-first-claim, agent RSS samples, wall time vs runner time."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_fleet(root, tasks)
        started_wall, started = time.time(), time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "coordinator", "-C", tmp, "run", "-n", str(agents),
                                 "--until-empty", "--no-dashboard"], stdout=subprocess.DEVNULL)
        rss: list[float] = []
        while proc.poll() is None:
            rss.extend(agent_rss_mb(root))
            time.sleep(0.05)
        wall_s = time.perf_counter() - started
        run_ms = [h["run_ms"] for p in (root / ".coordinator" / "records").glob("*.json")
                  for h in json.loads(p.read_text())["history"]]
        first = first_claim_s(root, started_wall)
    return {"tasks": tasks, "agents": agents, "exit_code": proc.returncode, "done": len(run_ms),
            "start_to_first_claim_s": round(first, 3) if first is not None else None,
            "agent_rss_mb_max": round(max(rss), 1) if rss else None,
            "agent_rss_mb_median": round(statistics.median(rss), 1) if rss else None,
            "wall_s": round(wall_s, 2), "runner_s_sum": round(sum(run_ms) / 1000, 2),
            "wall_x_agents_vs_runner_sum": round(wall_s * agents / (sum(run_ms) / 1000), 2) if run_ms else None}


def time_status(tasks: int) -> dict:
    """`coordinator status` over ``tasks`` files, against bare Python start-up."""
    def median_s(argv: list[str]) -> float:
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            samples.append(time.perf_counter() - started)
        return round(statistics.median(samples), 3)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_fleet(root, tasks)
        subprocess.run([sys.executable, "-m", "coordinator", "-C", tmp, "status"], stdout=subprocess.DEVNULL)
        python_s = median_s([sys.executable, "-c", "pass"])
        status_s = median_s([sys.executable, "-m", "coordinator", "-C", tmp, "status"])
        status_json_s = median_s([sys.executable, "-m", "coordinator", "-C", tmp, "status", "--json"])
    return {"status_tasks": tasks, "python_startup_s": python_s, "status_s": status_s,
            "status_json_s": status_json_s, "status_vs_python_startup": round(status_s / python_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--status-tasks", type=int, default=10000)
    args = parser.parse_args()
    print(json.dumps({"fleet": run_fleet(args.tasks, args.agents), "status": time_status(args.status_tasks)},
                     indent=2))


if __name__ == "__main__":
    main()
