"""Benchmark the control plane (the task API and its SSE fleet stream) against a real gateway; prints JSON.

    python scripts/bench_api.py [--quick] [--tasks N] [--cli-tasks N] [--clients N] [--probes N] [--idle-s S]

The script starts ``python -m coordinator -C ROOT gateway`` in a temporary echo
fleet and reads its URL and fleet token from ``.coordinator/gateway.json``. All
clients live in this one asyncio process. In order, on one gateway:

* idle CPU: the gateway's CPU seconds (user + system, psutil) per second of wall
  with no stream ever opened, with ``--clients`` idle ``/v1/coordinator/events``
  streams connected, and with none again (the one tailer now running);
* event delay: the wall time from right before ``store.append_event`` (this
  process opens the fleet's store as an agent does, so each probe is a real line
  of ``events.jsonl``) to the frame carrying that probe's unique id arriving at
  each client, at 1 and at ``--clients`` clients; probes are spaced at random so
  they do not lock onto the tailer's 0.1 s poll;
* enqueueing: ``coordinator add`` run ``--cli-tasks`` times one after another and
  ``--cli-tasks`` times 16 at once (the baseline, measured first so the API meets
  the larger queue), then ``POST /v1/coordinator/tasks`` of ``--tasks`` unique
  tasks at concurrency 16 (httpx); tasks per second, for the API also by quarter
  of the run (a request's cost grows with the queue), and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil

from coordinator.clock import poll
from coordinator.config import load_config
from coordinator.store import Store, open_store

ROOT = Path(__file__).resolve().parent.parent
API = "/v1/coordinator"
FLEET = '[backends.default]\nkind = "echo"\n'
CONCURRENCY = 16
GATEWAY_START_S = 60.0
IDLE_TARGET_PCT = 2.0
PROBE_GAP_S = (0.12, 0.32)  # random spacing of the probes: not a multiple of the tailer's 0.1 s poll


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def start_gateway(root: Path) -> tuple[subprocess.Popen, dict[str, Any]]:
    """``coordinator gateway`` in ``root``; (process, gateway.json) once it serves."""
    state = root / ".coordinator" / "gateway.json"
    log = open(root / "gateway.log", "wb")  # noqa: SIM115  (the process holds it; closed at exit)
    proc = subprocess.Popen([sys.executable, "-m", "coordinator", "-C", str(root), "gateway"], stdout=log,
                            stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True)
    for _ in poll(0.02, timeout_s=GATEWAY_START_S):
        if proc.poll() is not None:
            break
        try:
            info = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        if info.get("pid") == proc.pid:
            return proc, info
    proc.kill()
    raise RuntimeError(f"the gateway did not start: {(root / 'gateway.log').read_text()[-500:]}")


# --- SSE clients ---------------------------------------------------------------------------------

class Streams:
    """``n`` clients of ``/events`` in this process; ``arrivals[probe]`` is when each client saw it."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url + API + "/events"
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.tasks: list[asyncio.Task[None]] = []
        self.opened = 0

    async def open(self, n: int, timeout_s: float = 60) -> None:
        """Connect ``n`` more clients; returns once the server has answered each of them."""
        self.tasks += [asyncio.create_task(self._read()) for _ in range(n)]
        await self._until(lambda: self.opened == len(self.tasks), timeout_s, f"{n} streams did not open")

    async def _read(self) -> None:
        async with self.session.get(self.url) as response:
            if response.status != 200:
                raise RuntimeError(f"/events answered {response.status}")
            self.opened += 1
            async for line in response.content:
                if line.startswith(b"data: ") and b'"bench_probe"' in line:
                    seen = time.time()
                    self.arrivals[json.loads(line[6:])["probe"]].append(seen)

    async def wait_for(self, probe: str, clients: int, timeout_s: float = 30) -> None:
        """Until ``clients`` clients have seen ``probe``."""
        await self._until(lambda: len(self.arrivals[probe]) >= clients, timeout_s,
                          f"probe {probe}: not every one of {clients} clients saw it")

    async def _until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            ended = next((task for task in self.tasks if task.done()), None)
            if ended is not None:
                ended.result()  # a client's error, raised here
                raise RuntimeError(f"a stream ended early; {what}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out: {what}")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks, self.opened = [], 0


def session(token: str, clients: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"authorization": f"Bearer {token}"},
                                 connector=aiohttp.TCPConnector(limit=clients + 8),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=None))


# --- the measurements ----------------------------------------------------------------------------

def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def cpu_pct(pid: int, seconds: float) -> float:
    """The process's CPU use over ``seconds`` of wall, in percent of one core."""
    before, started = cpu_s(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return round((cpu_s(pid) - before) / (time.monotonic() - started) * 100, 3)


async def measure_idle(info: dict[str, Any], clients: int, seconds: float) -> dict[str, Any]:
    """Gateway CPU with no stream yet, with ``clients`` idle streams, then with none again."""
    out: dict[str, Any] = {"seconds": seconds, "clients": clients}
    await asyncio.sleep(1.0)  # start-up work settles
    out["cpu_pct_0_clients"] = await cpu_pct(info["pid"], seconds)
    async with session(info["token"], clients) as client:
        streams = Streams(client, info["url"])
        await streams.open(clients)
        await asyncio.sleep(1.0)
        out[f"cpu_pct_{clients}_clients"] = await cpu_pct(info["pid"], seconds)
        await streams.close()
    await asyncio.sleep(1.0)
    out["cpu_pct_0_clients_tailer_running"] = await cpu_pct(info["pid"], seconds)
    added = out[f"cpu_pct_{clients}_clients"] - out["cpu_pct_0_clients"]
    out[f"added_cpu_pct_{clients}_clients"] = round(added, 3)
    out["added_cpu_pct_per_client"] = round(added / clients, 5)
    return out


async def measure_delay(info: dict[str, Any], store: Store, clients: int, probes: int) -> dict[str, Any]:
    """Append-to-arrival delay of ``probes`` events at ``clients`` clients: p50, p99, max (ms)."""
    async with session(info["token"], clients) as client:
        streams = Streams(client, info["url"])
        await streams.open(clients)
        await _probe(store, streams, f"warm-{clients}", clients)  # every stream is subscribed
        delays: list[float] = []
        for n in range(probes):
            await asyncio.sleep(random.uniform(*PROBE_GAP_S))
            sent = await _probe(store, streams, f"p{clients}-{n}", clients)
            delays += [(seen - sent) * 1000 for seen in streams.arrivals[f"p{clients}-{n}"]]
        await streams.close()
    return {"clients": clients, "probes": probes, "samples": len(delays), "p50_ms": round(pct(delays, 50), 2),
            "p99_ms": round(pct(delays, 99), 2), "max_ms": round(max(delays), 2)}


async def _probe(store: Store, streams: Streams, probe: str, clients: int) -> float:
    sent = time.time()
    store.append_event("bench_probe", probe=probe)
    await streams.wait_for(probe, clients)
    return sent


async def api_enqueue(info: dict[str, Any], n: int, concurrency: int) -> dict[str, Any]:
    """``n`` unique ``POST /tasks`` at ``concurrency``: tasks per second, overall and by quarter of the run."""
    bodies = iter([{"id": f"api-{i}", "prompt": f"api task {i}"} for i in range(n)])
    finished: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=info["url"], headers={"authorization": f"Bearer {info['token']}"},
                                 limits=limits, timeout=120) as client:
        async def worker() -> None:
            for body in bodies:
                response = await client.post(f"{API}/tasks", json=body)
                if response.status_code != 202:
                    raise RuntimeError(f"POST /tasks: {response.status_code} {response.text[:200]}")
                finished.append(time.perf_counter())
        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
    marks = [started] + [finished[min(n - 1, (k + 1) * n // 4 - 1)] for k in range(4)]
    quarters = [round((n // 4) / (end - begin), 1) for begin, end in zip(marks, marks[1:])]
    elapsed = finished[-1] - started
    return {"tasks": n, "concurrency": concurrency, "seconds": round(elapsed, 3),
            "tasks_per_s": round(n / elapsed, 1), "tasks_per_s_by_quarter": quarters}


async def cli_add(root: Path, ids: list[str], concurrency: int) -> dict[str, Any]:
    """``coordinator add`` once per id, ``concurrency`` processes at a time; tasks per second."""
    pending = iter(ids)

    async def worker() -> None:
        for task_id in pending:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "coordinator", "-C", str(root), "add", f"cli task {task_id}", "--id", task_id,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=cli_env())
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"coordinator add: {err.decode()[-300:]}")
    elapsed = await _timed(lambda: asyncio.gather(*[worker() for _ in range(concurrency)]))
    return {"tasks": len(ids), "concurrency": concurrency, "seconds": round(elapsed, 3),
            "tasks_per_s": round(len(ids) / elapsed, 2)}


async def _timed(run: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await run()
    return time.perf_counter() - started


async def measure_enqueue(root: Path, info: dict[str, Any], tasks: int, cli_tasks: int) -> dict[str, Any]:
    """The CLI first (sequential, then 16 at once), then the API: tasks per second and ratios."""
    python_s = await _timed(python_startup)
    sequential = await cli_add(root, [f"cli-seq-{i}" for i in range(cli_tasks)], 1)
    concurrent = await cli_add(root, [f"cli-c16-{i}" for i in range(cli_tasks)], CONCURRENCY)
    api = {"queue_before": 2 * cli_tasks, **await api_enqueue(info, tasks, CONCURRENCY)}
    return {"api_c16": api, "cli_sequential": sequential, "cli_c16": concurrent,
            "python_startup_s": round(python_s, 3),
            "api_c16_vs_cli_sequential": round(api["tasks_per_s"] / sequential["tasks_per_s"], 1),
            "api_c16_vs_cli_c16": round(api["tasks_per_s"] / concurrent["tasks_per_s"], 1)}


async def python_startup() -> None:
    """A bare ``python -c pass``: what any CLI call pays before the coordinator's own work."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await proc.wait()


async def measure(root: Path, info: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Idle CPU first (on a quiet gateway), then the event delay, then enqueueing."""
    out: dict[str, Any] = {"idle_cpu": await measure_idle(info, args.clients, args.idle_s)}
    store = open_store(load_config(root))
    out["event_delay"] = [await measure_delay(info, store, clients, args.probes) for clients in (1, args.clients)]
    out["enqueue"] = await measure_enqueue(root, info, args.tasks, args.cli_tasks)
    added = out["idle_cpu"][f"added_cpu_pct_{args.clients}_clients"]
    out["targets"] = {f"idle_{args.clients}_clients_under_2pct_cpu": added < IDLE_TARGET_PCT}
    return out


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks enqueued through the API")
    parser.add_argument("--cli-tasks", type=int, default=48, help="`coordinator add` calls, each way")
    parser.add_argument("--clients", type=int, default=200, help="concurrent SSE clients")
    parser.add_argument("--probes", type=int, default=100, help="events timed at each client count")
    parser.add_argument("--idle-s", type=float, default=10.0, help="seconds of each idle CPU reading")
    parser.add_argument("--quick", action="store_true", help="small runs, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.cli_tasks, args.clients, args.probes, args.idle_s = 64, 4, 20, 5, 1.0
    raise_fd_limit(4 * args.clients + 256)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "fleet"
        (root / "tasks").mkdir(parents=True)
        (root / "fleet.toml").write_text(FLEET)
        proc, info = start_gateway(root)
        try:
            result = asyncio.run(measure(root, info, args))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    result.update(python=sys.version.split()[0], cpus=os.cpu_count(),
                  load_average=[round(x, 2) for x in os.getloadavg()])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
