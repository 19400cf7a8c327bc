"""``bench_gateway.py --hosts 2``: how soon a client on another host's gateway gets a stream another host leads.

Processes: a redis-server (AOF on, a free port), ``bench_gateway.py``'s fake OpenAI
upstream (each request asks it to hold the call ``--hold-ms`` before its first event;
it then streams an event every 2 ms), and two gateways ("host-a", "host-b": two fleet roots whose ``[fleet] state``
is that Redis under one ``state_name``). Each sample sends one streaming request to
host-a (the leader), then, while the upstream still holds it, the same request to
host-b (a cross-host follower: it replays the leader's Redis stream) and to host-a
(a same-gateway joiner: the baseline, teed in memory). For each, the time its first
byte arrived minus the leader's first byte; p50/p90/p99 over the samples. Every
sample must make exactly one upstream call; the run fails otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_gateway import GATEWAY_CODE, start_upstream, upstream_calls

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen in {timeout_s:.0f}s")
        time.sleep(0.01)


def start_redis(tmp: Path) -> tuple[subprocess.Popen, str]:
    if shutil.which("redis-server") is None:
        raise SystemExit("--hosts 2 needs redis-server (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp),
                             "--appendonly", "yes", "--save", "", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL)

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_for(answers, "redis-server answering")
    return proc, f"redis://127.0.0.1:{port}/0"


def start_gateway(tmp: Path, host: str, upstream_url: str, redis_url: str) -> tuple[subprocess.Popen, dict]:
    root = tmp / host
    root.mkdir()
    (root / "fleet.toml").write_text(
        f'[fleet]\nstate = "{redis_url}"\nstate_name = "bench"\n\n[gateway]\nmax_queue = 4096\n\n'
        f'[backends.default]\nkind = "openai"\nbase_url = "{upstream_url}/v1"\napi_key_env = ""\n\n'
        f'[models]\ndefault = {{ backend = "default", model = "gpt-4o-mini" }}\n')
    proc = subprocess.Popen([PYTHON, "-c", GATEWAY_CODE, str(root)],
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COORDINATOR_HOST": host})
    state = root / ".coordinator" / "gateway.json"
    wait_for(lambda: state.exists() and json.loads(state.read_text() or "{}").get("pid") == proc.pid,
             f"the gateway of {host} serving")
    return proc, json.loads(state.read_text())


async def first_byte_at(info: dict, body: bytes) -> float:
    """Send a streaming request; the perf_counter time its first response byte arrived (then read it all)."""
    host, port = info["url"].removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                  f"authorization: Bearer {info['token']}\r\nconnection: close\r\n"
                  f"content-length: {len(body)}\r\n\r\n").encode() + body)
    await reader.readexactly(1)
    at = time.perf_counter()
    rest = await reader.read()
    writer.close()
    if b"[DONE]" not in rest:
        raise RuntimeError(f"an incomplete stream: {rest[-200:]!r}")
    return at


async def sample(a: dict, b: dict, i: int, hold_ms: int) -> tuple[float, float]:
    """(cross-host, same-host) first byte minus the leader's, in seconds."""
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "bench_delay_ms": hold_ms,
                       "messages": [{"role": "user", "content": f"sample {i}: stream me something"}]}).encode()
    leader = asyncio.create_task(first_byte_at(a, body))
    await asyncio.sleep(hold_ms / 3000)  # the leader's call is at the upstream, held
    cross, same = await asyncio.gather(first_byte_at(b, body), first_byte_at(a, body))
    lead = await leader
    return cross - lead, same - lead


def pcts(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = (lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3))
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


async def measure(a: dict, b: dict, upstream_url: str, samples: int, hold_ms: int) -> dict:
    for i in range(10):  # warm-up: connections, script loads
        await sample(a, b, -1 - i, hold_ms)
    before = await upstream_calls(upstream_url)
    cross, same = [], []
    for i in range(samples):
        x, s = await sample(a, b, i, hold_ms)
        cross.append(x)
        same.append(s)
    calls = await upstream_calls(upstream_url) - before
    if calls != samples:
        raise RuntimeError(f"{samples} samples made {calls} upstream calls; every sample should make one")
    return {"join_first_byte_after_leader_ms": {"cross_gateway": pcts(cross), "same_gateway": pcts(same)},
            "upstream_calls_per_sample": calls / samples}


def run_hosts(samples: int, hold_ms: int) -> dict:
    """Start Redis, the upstream and two gateways; measure; stop them all."""
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        try:
            redis_proc, redis_url = start_redis(tmp)
            procs.append(redis_proc)
            upstream, upstream_url = start_upstream(tmp)
            procs.append(upstream)
            infos = []
            for host in ("host-a", "host-b"):
                proc, info = start_gateway(tmp, host, upstream_url, redis_url)
                procs.append(proc)
                infos.append(info)
            result = asyncio.run(measure(infos[0], infos[1], upstream_url, samples, hold_ms))
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(10)
    return {"hosts": 2, "samples": samples, "upstream_hold_ms": hold_ms, **result,
            "python": sys.version.split()[0], "cpus": os.cpu_count()}
