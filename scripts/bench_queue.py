"""Benchmark the queue's own overhead, on the file store and on Redis; prints JSON.

    python scripts/bench_queue.py [--sizes 1000 10000] [--agents 8] [--store {file,redis,both}] [--task-ms 0]

For each size it builds a fleet of that many task files whose agent runs
`true` (so the runner costs one fork/exec and nothing else), starts N real
`coordinator agent --until-empty` processes at once, and reads back (through the
fleet's store) what each agent measured of itself: the time to claim (reap, catch
up, pick, the claim operation) and the time to record the outcome. The smallest
size is the baseline the others are compared against: claiming must not grow with
the queue.

``--task-ms N`` makes each task last N ms (`sleep`) instead of none. With `true`
the agents do nothing but claim and record, so 8 of them keep every core busy and
a claim's time is mostly waiting for a CPU; tasks that take a while (as real ones
take seconds to minutes) leave the cores free, and the claim's time is its own.

``--store redis`` (or ``both``, file first) runs the same fleets with
``[fleet] state = "redis://127.0.0.1:PORT/0"`` on a ``redis-server`` this script
starts for each run (a free port, ``--appendonly yes --save ""``, in the run's
temporary folder). For each Redis run it reads ``INFO commandstats`` (reset just
before the agents start): every command the server ran, those inside the Lua
scripts included. One more, untimed run at the smallest size has ``MONITOR`` on,
which tells the commands clients sent (round trips, except that a full resync
pipelines its reads 500 to a trip) from those the scripts ran, and which script
each ``EVALSHA`` ran.

With the file store it also times `coordinator tasks` over the largest fleet and
`coordinator --help`, each against `python -c pass` measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coordinator.clock import poll
from coordinator.config import load_config
from coordinator.store import open_store
from coordinator.tasks import FINISHED

FLEET = """
[fleet]
default_agent = "noop"
heartbeat_s = 5
{state}
[agents.noop]
kind = "command"
command = {command}
"""
REDIS_START_S = 20.0
MONITOR_END = "bench-queue-monitor-end"


def make_fleet(root: Path, size: int, state: str | None = None, task_ms: int = 0) -> None:
    """``size`` single-task files and a fleet.toml with a no-op (or ``task_ms`` sleep) agent, on ``state`` if given."""
    (root / "tasks").mkdir(parents=True)
    command = json.dumps(["sleep", str(task_ms / 1000)] if task_ms else ["true"])
    (root / "fleet.toml").write_text(FLEET.format(state=f'state = "{state}"\n' if state else "", command=command))
    for n in range(size):
        (root / "tasks" / f"t{n:05d}.toml").write_text(f'prompt = "task {n}"\npriority = {n % 4}\n')


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run_queue(size: int, agents: int, redis: RedisServer | None = None,
              counting: type[Counting] | None = None, task_ms: int = 0) -> dict:
    """Drain a fleet of ``size`` no-op tasks with ``agents`` processes; the agents' own timings.

    On Redis, ``counting`` counts the server's commands from just before the agents start until they
    have all exited (reported as ``server``).
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "fleet"
        make_fleet(root, size, redis.url if redis else None, task_ms)
        store = open_store(load_config(root))  # on Redis: the fleet's incarnation, before the agents race for it
        counter = counting(redis) if counting and redis else None
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "coordinator", "-C", str(root), "agent", "--id",
                                   f"bench-{n}", "--until-empty"], stderr=subprocess.DEVNULL)
                 for n in range(agents)]
        codes = [p.wait() for p in procs]
        wall_s = time.perf_counter() - started
        counts = counter.stop() if counter else None
        records = list(store.iter_records())
        claims = [attempt["claim_ms"] for record in records for attempt in record.history]
        finished = sum(record.state in FINISHED for record in records)
        overheads = [agent["overhead"] for agent in store.read_agents()]
    tasks, record_ms = sum(o["tasks"] for o in overheads), sum(o["record_ms"] for o in overheads)
    run = {"store": "redis" if redis else "file", "tasks": size, "agents": agents, "task_ms": task_ms,
           "done": len(claims),
           "finished": finished,
           "agent_exit_codes_ok": all(c == 0 for c in codes), "wall_s": round(wall_s, 2),
           "claim_ms_p50": round(percentile(claims, 50), 3), "claim_ms_p99": round(percentile(claims, 99), 3),
           "record_ms_mean": round(record_ms / max(tasks, 1), 3),
           "per_task_ms": round(percentile(claims, 50) + record_ms / max(tasks, 1), 3)}
    if counts is not None:
        run["server"] = per_claim(counts, len(claims), finished)
    return run


def compare_sizes(runs: list[dict]) -> None:
    """Each larger size against the smallest (the baseline), in place."""
    base = runs[0]
    for run in runs[1:]:
        run["per_task_vs_baseline"] = round(run["per_task_ms"] / base["per_task_ms"], 2)
        run["claim_p50_vs_baseline"] = round(run["claim_ms_p50"] / base["claim_ms_p50"], 2)


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


# --- Redis ---------------------------------------------------------------------------------------

class RedisServer:
    """A redis-server of the benchmark's own: a free loopback port, AOF on, no snapshots, in ``folder``."""

    def __init__(self, folder: Path) -> None:
        import redis  # noqa: PLC0415  (only Redis runs need redis-py)

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                                      str(folder), "--appendonly", "yes", "--save", "", "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, decode_responses=True)
        for _ in poll(0.02, timeout_s=REDIS_START_S):
            if self.proc.poll() is not None:
                break
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                continue
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {REDIS_START_S:.0f}s")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.client.close()


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder))
        try:
            yield server
        finally:
            server.stop()


class Counting:
    """Counts the commands a Redis server runs from construction until ``stop()``, by command."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def stop(self) -> dict[str, dict[str, int]]:
        """Count groups (e.g. ``{"server_ran": {command: calls}}``)."""
        raise NotImplementedError


class CommandStats(Counting):
    """``INFO commandstats``, reset at the start: every command run, those inside scripts included (cheap)."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__(server)
        server.client.config_resetstat()

    def stop(self) -> dict[str, dict[str, int]]:
        stats = self.server.client.info("commandstats")
        ran = {name.removeprefix("cmdstat_"): row["calls"] for name, row in stats.items()}
        ran.pop("config|resetstat", None)  # the benchmark's own call
        return {"server_ran": dict(sorted(ran.items(), key=lambda kv: -kv[1]))}


class Monitor(Counting):
    """``MONITOR``: the commands clients sent apart from those the Lua scripts ran, ``EVALSHA`` by script."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__(server)
        self.scripts = script_names()
        self.sent: Counter[str] = Counter()
        self.scripted: Counter[str] = Counter()
        self.ended = threading.Event()
        self.sock = socket.create_connection(("127.0.0.1", server.port))
        self.sock.sendall(b"MONITOR\r\n")
        self.thread = threading.Thread(target=self._read, args=(self.sock.makefile("rb"),), daemon=True)
        self.thread.start()

    def _read(self, lines: Any) -> None:
        for line in lines:
            if line.startswith(b"+OK"):
                continue
            head, _, args = line.partition(b'] "')  # +<time> [<db> <client address or "lua">] "<cmd>" "<arg>"...
            name = args.split(b'"', 1)[0].decode().lower()
            if name == "echo" and MONITOR_END.encode() in args:
                self.ended.set()
                return
            if name == "evalsha":
                name = "evalsha " + self.scripts.get(args.split(b'"')[2].decode(), "?")
            (self.scripted if head.endswith(b" lua") else self.sent)[name] += 1

    def stop(self) -> dict[str, dict[str, int]]:
        self.server.client.echo(MONITOR_END)  # everything before it has been counted once it comes back
        ended = self.ended.wait(60)
        self.sock.close()
        if not ended:
            raise RuntimeError("MONITOR fell more than 60 s behind the server; its counts would be partial")
        return {"clients_sent": dict(self.sent.most_common()), "scripts_ran": dict(self.scripted.most_common())}


def script_names() -> dict[str, str]:
    """The store's Lua scripts by the SHA1 an ``EVALSHA`` names them with."""
    from coordinator.store.redis import SCRIPTS, script_source  # noqa: PLC0415

    return {hashlib.sha1(script_source(name).encode()).hexdigest(): name for name in SCRIPTS}


def per_claim(counts: dict[str, dict[str, int]], claims: int, finished: int) -> dict[str, Any]:
    """Each count group: its total, per claim and per finished task, and per claim by command."""
    out: dict[str, Any] = {}
    for group, by_command in counts.items():
        total = sum(by_command.values())
        out[group] = {"total": total, "per_claim": round(total / max(claims, 1), 2),
                      "per_finished_task": round(total / max(finished, 1), 2),
                      "by_command_per_claim": {k: round(v / max(claims, 1), 3) for k, v in by_command.items()},
                      "by_command": by_command}
    return out


def run_redis(sizes: list[int], agents: int, task_ms: int = 0) -> dict:
    """The timed runs on Redis (commandstats on), then one untimed run at the smallest size with MONITOR."""
    runs = []
    for size in sizes:
        with redis_server() as server:
            runs.append(run_queue(size, agents, server, CommandStats, task_ms))
    with redis_server() as server:
        counted = run_queue(sizes[0], agents, server, Monitor, task_ms)
        version = server.client.info("server")["redis_version"]
    compare_sizes(runs)
    return {"queue": runs, "redis_version": version,
            "round_trips": {"tasks": counted["tasks"], "claims": counted["done"],
                            "finished": counted["finished"], **counted["server"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--task-ms", type=int, default=0, help="how long each task runs (0: `true`, no time)")
    parser.add_argument("--store", choices=("file", "redis", "both"), default="file",
                        help="the agents' state store (both: the file store, then Redis, in one run)")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    if args.store in ("file", "both"):
        out["queue"] = [run_queue(size, args.agents, task_ms=args.task_ms) for size in args.sizes]
        compare_sizes(out["queue"])
    if args.store in ("redis", "both"):
        out["redis"] = measure_redis(args.sizes, args.agents, args.task_ms)
        if "queue" in out and "queue" in out["redis"]:
            out["redis_vs_file"] = [{"tasks": f["tasks"], "claim_p50": round(r["claim_ms_p50"] / f["claim_ms_p50"], 2),
                                     "per_task": round(r["per_task_ms"] / f["per_task_ms"], 2)}
                                    for f, r in zip(out["queue"], out["redis"]["queue"], strict=True)]
    if "queue" in out:
        out["cli"] = time_cli(max(args.sizes))
    print(json.dumps(out, indent=2))
    if "error" in out.get("redis", {}):
        sys.exit(1)


def measure_redis(sizes: list[int], agents: int, task_ms: int = 0) -> dict:
    """``run_redis`` and its targets, or why Redis cannot be measured here."""
    if shutil.which("redis-server") is None:
        return {"error": "redis-server is not on PATH; install it (apt-get install redis-server) to measure Redis"}
    if importlib.util.find_spec("redis") is None:
        return {"error": "redis-py is not installed; run `pip install -e '.[redis]'`"}
    result = run_redis(sizes, agents, task_ms)
    runs = result["queue"]
    result["targets"] = {"claim_p50_le_1ms": max(r["claim_ms_p50"] for r in runs) <= 1.0}
    if len(runs) > 1:
        result["targets"]["per_task_largest_vs_smallest_le_1_5x"] = runs[-1]["per_task_vs_baseline"] <= 1.5
    return result


if __name__ == "__main__":
    main()
