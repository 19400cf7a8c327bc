"""Benchmark the gateway against a fast fake upstream, direct and through the gateway, in one run.

    python scripts/bench_gateway.py [--quick] [--requests N] [--rss-requests N] [--only routing]

Three processes: a minimal fake OpenAI upstream (aiohttp, one fixed answer, so it
costs little), the gateway (``coordinator.gateway.serve_forever``, as
``coordinator gateway`` runs it, with an ``openai`` backend pointing at the fake),
and this script as the load generator. The load generator speaks HTTP/1.1 over raw
asyncio streams with keep-alive: a few microseconds per request, so the figures
are about the gateway rather than about a client library, and the same client
measures both paths. Prints one JSON object; the targets are in docs/gateway.md.

Two figures are about routing and live configuration (docs/performance.md): the
cost of one routing decision, timed in this process against a table with no rules
in the same run, and the latency of requests before, during and after a reload
that moves the backend to a second upstream process (no request may fail).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# --- the fake upstream (runs in its own process: ``bench_gateway.py --upstream PORTFILE``) ------

UPSTREAM_CODE = r'''
import asyncio, itertools, json, sys, time
from aiohttp import web
from coordinator.backends.prompt_cache import PromptCache
from coordinator.backends.synthetic import synthesize
SYNTHETIC = sys.argv[2] == "synthetic"
cache = PromptCache()
ids = itertools.count(1)

ANSWER = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok, done."},
                       "logprobs": None, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 25, "completion_tokens": 3, "total_tokens": 28}}
BODY = json.dumps(ANSWER).encode()
calls = {"n": 0}

async def chat(request):
    raw = await request.read()
    calls["n"] += 1
    if b"bench_delay_ms" in raw:  # lets the coalescing run keep its one call in flight
        await asyncio.sleep(json.loads(raw)["bench_delay_ms"] / 1000)
    if not SYNTHETIC:
        return web.Response(body=BODY, content_type="application/json")
    # What any server must do: parse the request and answer it (the echo backend's code).
    answer = synthesize("openai", request.path, json.loads(raw), False, message_id=f"chatcmpl-{next(ids)}",
                        cache=cache)
    return web.Response(status=answer.status, body=answer.body, content_type="application/json")

async def count(request):
    return web.json_response(calls)

async def main():
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/calls", count)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    with open(sys.argv[1], "w") as f:
        f.write(str(port))
    await asyncio.Event().wait()

asyncio.run(main())
'''

GATEWAY_CODE = r'''
import logging, sys
from coordinator.config import load_config
from coordinator.gateway.server import serve_forever
logging.basicConfig(level=logging.WARNING)
serve_forever(load_config(sys.argv[1]), {})
'''


# --- a small keep-alive HTTP/1.1 client ----------------------------------------------------------

class Conn:
    """One keep-alive connection; ``post`` sends a request and reads the whole response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> Conn:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: bytes, headers: str) -> tuple[int, bytes, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n{headers}\r\n").encode()
        self.writer.write(head + body)
        status_line_and_headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(status_line_and_headers[9:12])
        length = 0
        for line in status_line_and_headers.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        payload = await self.reader.readexactly(length)
        return status, status_line_and_headers, payload

    def close(self) -> None:
        self.writer.close()


def chat_body(i: int | str, extra: dict | None = None) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"request {i}: say ok"}]}
    body.update(extra or {})
    return json.dumps(body).encode()


async def run_load(url: str, headers: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    """Send ``bodies`` over ``concurrency`` connections; (elapsed seconds, per-request latencies)."""
    conns = [await Conn.open(url) for _ in range(concurrency)]
    latencies: list[float] = []
    next_index = iter(range(len(bodies)))

    async def worker(conn: Conn) -> None:
        for i in next_index:
            started = time.perf_counter()
            status, head, _ = await conn.post("/v1/chat/completions", bodies[i], headers)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {head[:200]!r}")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*[worker(c) for c in conns])
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return elapsed, latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- processes -----------------------------------------------------------------------------

def start_upstream(tmp: Path, kind: str = "synthetic") -> tuple[subprocess.Popen, str]:
    portfile = tmp / "upstream.port"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([PYTHON, "-c", UPSTREAM_CODE, str(portfile), kind], env=env)
    deadline = time.monotonic() + 20
    while not portfile.exists() or not portfile.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError("fake upstream did not start")
        time.sleep(0.01)
    return proc, f"http://127.0.0.1:{portfile.read_text()}"


def fleet_toml(upstream_url: str, cache_max_mb: float, rpm: int = 0) -> str:
    return (f'[gateway]\ncache_max_mb = {cache_max_mb}\nmax_queue = 4096\n\n'
            f'[backends.default]\nkind = "openai"\nbase_url = "{upstream_url}/v1"\napi_key_env = ""\n'
            f'max_concurrency = 256\nrpm = {rpm}\n\n'
            f'[models]\ndefault = {{ backend = "default", model = "gpt-4o-mini" }}\n')


def write_fleet(tmp: Path, upstream_url: str, cache_max_mb: float) -> Path:
    root = tmp / "fleet"
    root.mkdir()
    (root / "fleet.toml").write_text(fleet_toml(upstream_url, cache_max_mb))
    return root


def start_gateway(root: Path) -> tuple[subprocess.Popen, dict, float]:
    """Start ``serve_forever`` in a new process; (process, gateway.json, seconds from spawn to ready)."""
    state = root / ".coordinator" / "gateway.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen([PYTHON, "-c", GATEWAY_CODE, str(root)], env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            info = json.loads(state.read_text())
            if info["pid"] == proc.pid:
                break
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("gateway did not start")
        time.sleep(0.002)
    ready_s = time.perf_counter() - started  # gateway.json is written after the socket serves
    return proc, info, ready_s


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def upstream_calls(upstream_url: str) -> int:
    conn = await Conn.open(upstream_url)
    conn.writer.write(f"GET /calls HTTP/1.1\r\nhost: {conn.host}\r\n\r\n".encode())
    head = await conn.reader.readuntil(b"\r\n\r\n")
    length = int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")][0][15:])
    data = json.loads(await conn.reader.readexactly(length))
    conn.close()
    return data["n"]


# --- the measurements ----------------------------------------------------------------------

async def paired_latency(upstream_url: str, gateway_url: str, auth: str, n: int) -> tuple[list[float], list[float]]:
    """Concurrency 1, alternating direct and gateway requests, so both see the same machine load."""
    direct, gateway = await Conn.open(upstream_url), await Conn.open(gateway_url)
    d_lat: list[float] = []
    g_lat: list[float] = []
    for i in range(n):
        for conn, headers, out, tag in ((direct, "", d_lat, "d"), (gateway, auth, g_lat, "g")):
            body = chat_body(f"lat-{tag}{i}")
            started = time.perf_counter()
            status, head, _ = await conn.post("/v1/chat/completions", body, headers)
            out.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {head[:200]!r}")
    direct.close()
    gateway.close()
    return d_lat, g_lat


async def rps(url: str, headers: str, bodies: list[bytes], concurrency: int) -> float:
    elapsed, _ = await run_load(url, headers, bodies, concurrency)
    return len(bodies) / elapsed


async def measure_rss(gateway_url: str, auth: str, pid: int, requests: int) -> dict:
    """RSS idle, after a warm-up that fills the response cache to its bound, and after ``requests`` more."""
    out: dict = {"rss_idle_mb": round(rss_mb(pid), 1)}
    await run_load(gateway_url, auth, [chat_body(f"warm-{i}") for i in range(10_000)], 32)
    out["rss_warm_mb"] = round(rss_mb(pid), 1)
    bodies = [chat_body(f"rss-{i}" if i % 2 else f"rss-hot-{i % 100}") for i in range(requests)]  # half distinct
    await run_load(gateway_url, auth, bodies, 32)
    out["rss_after_long_run_mb"] = round(rss_mb(pid), 1)
    out["long_run_requests"] = requests
    out["rss_growth_over_long_run"] = out["rss_after_long_run_mb"] / out["rss_warm_mb"] - 1
    out["rss_growth_vs_idle"] = out["rss_after_long_run_mb"] / out["rss_idle_mb"] - 1
    return out


async def measure_latency(upstream_url: str, gateway_url: str, auth: str, pairs: int) -> dict:
    """Added latency at concurrency 1 on the miss path (every body distinct)."""
    await paired_latency(upstream_url, gateway_url, auth, 200)
    direct, through = await paired_latency(upstream_url, gateway_url, auth, pairs)
    return {"latency_c1_direct_ms": {"p50": pct(direct, .5) * 1e3, "p99": pct(direct, .99) * 1e3},
            "latency_c1_gateway_ms": {"p50": pct(through, .5) * 1e3, "p99": pct(through, .99) * 1e3},
            "added_latency_c1_ms": {"p50": (pct(through, .5) - pct(direct, .5)) * 1e3,
                                    "p99": (pct(through, .99) - pct(direct, .99)) * 1e3}}


async def measure_throughput(upstream_url: str, gateway_url: str, auth: str, n: int, rounds: int) -> dict:
    """Miss path direct vs gateway in alternating rounds, then the cache-hit path; c=32, medians."""
    direct, gateway = [], []
    for r in range(rounds):
        direct.append(await rps(upstream_url, "", [chat_body(f"tp-d{r}-{i}") for i in range(n)], 32))
        gateway.append(await rps(gateway_url, auth, [chat_body(f"tp-g{r}-{i}") for i in range(n)], 32))
    hit = chat_body("the same question")
    await run_load(gateway_url, auth, [hit], 1)
    hits = [await rps(gateway_url, auth, [hit] * n, 32) for _ in range(rounds)]
    out = {"miss_rps_c32_direct": statistics.median(direct), "miss_rps_c32_gateway": statistics.median(gateway),
           "hit_rps_c32_gateway": statistics.median(hits)}
    out["miss_ratio_of_direct"] = out["miss_rps_c32_gateway"] / out["miss_rps_c32_direct"]
    return out


async def measure_coalescing(upstream_url: str, gateway_url: str, auth: str) -> int:
    """Upstream calls for 1,000 identical concurrent requests (the upstream holds the call 300 ms)."""
    before = await upstream_calls(upstream_url)
    await run_load(gateway_url, auth, [chat_body("coalesce me", {"bench_delay_ms": 300})] * 1000, 1000)
    return await upstream_calls(upstream_url) - before


def measure_routing(calls: int = 20_000, rules: int = 20) -> dict:
    """One routing decision (rules, alias, budget check, chain), µs: ``rules`` rules, the last one matching,
    against a table with none; timed call by call, alternating, in this process."""
    from coordinator.config import FleetConfig, ModelAlias, RoutingRule
    from coordinator.errors import BudgetError
    from coordinator.gateway.routing import Facts, RoutingTable

    models = {"default": ModelAlias(model="claude-sonnet-4-6", downgrade="cheap"),
              "cheap": ModelAlias(model="claude-haiku-4-5")}
    table = [RoutingRule(labels=[f"label-{n}"], priority=[0], alias="cheap") for n in range(rules - 1)]
    table.append(RoutingRule(max_input_tokens=10_000, alias="cheap"))
    plain, routed = (RoutingTable(FleetConfig(models=models, routing=rs)) for rs in ([], table))
    facts = Facts(frozenset({"docs", "cli"}), 2, "llm", 800)

    def fits(target: object) -> BudgetError | None:  # what the gateway passes for a task with a budget
        return None

    def timed(table: RoutingTable) -> float:
        started = time.perf_counter_ns()
        table.chain(table.decide(facts, "default", fits).target)
        return (time.perf_counter_ns() - started) / 1000

    for table_ in (plain, routed):
        for _ in range(2000):
            timed(table_)  # warm: prices, chains
    base, ruled = [], []
    for _ in range(calls):
        base.append(timed(plain))
        ruled.append(timed(routed))
    out = {"no_rules_us": {"p50": pct(base, .5), "p99": pct(base, .99)},
           f"{rules}_rules_us": {"p50": pct(ruled, .5), "p99": pct(ruled, .99)}}
    out["added_us"] = {"p50": pct(ruled, .5) - pct(base, .5), "p99": pct(ruled, .99) - pct(base, .99)}
    out["ratio_p50"] = pct(ruled, .5) / pct(base, .5)
    return out


async def measure_reload(gateway_url: str, auth: str, root: Path, upstream2_url: str, cache_max_mb: float,
                         seconds: float = 9.0, concurrency: int = 8) -> dict:
    """c=8 distinct requests for ``seconds``; a third of the way in, fleet.toml moves the backend to a second
    upstream (and sets an rpm) and is reloaded. Latency of requests started before, during (from the
    reload's start to 0.25 s after its answer) and after; every failure counted."""
    records: list[tuple[float, float, bool]] = []
    window: dict[str, float] = {}
    stop_at = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        conn, i = await Conn.open(gateway_url), 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                status, _, _ = await conn.post("/v1/chat/completions", chat_body(f"reload-{w}-{i}"), auth)
                ok = status == 200
            except (OSError, asyncio.IncompleteReadError, ValueError):
                ok, conn = False, await Conn.open(gateway_url)
            records.append((started, time.perf_counter() - started, ok))
            i += 1
        conn.close()

    async def trigger() -> None:
        await asyncio.sleep(seconds / 3)
        (root / "fleet.toml").write_text(fleet_toml(upstream2_url, cache_max_mb, rpm=6_000_000))
        conn = await Conn.open(gateway_url)
        window["start"] = time.perf_counter()
        status, _, body = await conn.post("/v1/coordinator/config/reload", b"", auth)
        window["end"] = time.perf_counter()
        window["status"], window["generation"] = status, json.loads(body).get("generation", 0)
        conn.close()

    await asyncio.gather(trigger(), *[worker(w) for w in range(concurrency)])
    phases = {"before": [r for r in records if r[0] < window["start"]],
              "during": [r for r in records if window["start"] <= r[0] <= window["end"] + 0.25],
              "after": [r for r in records if r[0] > window["end"] + 0.25]}
    out: dict = {"reload_answer_ms": (window["end"] - window["start"]) * 1e3, "reload_status": window["status"],
                 "reload_generation": window["generation"], "failed_requests": sum(not ok for *_, ok in records)}
    for name, rows in phases.items():
        latencies = [lat for _, lat, _ in rows]
        out[f"{name}_ms"] = {"p50": pct(latencies, .5) * 1e3, "p99": pct(latencies, .99) * 1e3, "n": len(rows)}
    out["calls_at_new_upstream"] = await upstream_calls(upstream2_url)
    return out


async def measure(upstream_url: str, gateway_url: str, token: str, gateway_pid: int, args: argparse.Namespace) -> dict:
    """Every figure, RSS first (from idle), then latency, throughput and coalescing."""
    auth = f"authorization: Bearer {token}\r\n"
    out = await measure_rss(gateway_url, auth, gateway_pid, args.rss_requests)
    out.update(await measure_latency(upstream_url, gateway_url, auth, args.requests // 4))
    out.update(await measure_throughput(upstream_url, gateway_url, auth, args.requests, args.rounds))
    out["identical_1000_upstream_calls"] = await measure_coalescing(upstream_url, gateway_url, auth)
    out["rss_end_mb"] = round(rss_mb(gateway_pid), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests per throughput run")
    parser.add_argument("--rss-requests", type=int, default=100_000, help="requests in the RSS run")
    parser.add_argument("--cache-max-mb", type=float, default=4.0, help="[gateway] cache_max_mb for the run")
    parser.add_argument("--upstream", choices=("synthetic", "constant"), default="synthetic",
                        help="synthetic: parses each request and answers it (the echo backend's code); "
                             "constant: one fixed answer without reading the request")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per throughput figure")
    parser.add_argument("--quick", action="store_true", help="small runs, for a smoke test")
    parser.add_argument("--only", choices=("all", "routing"), default="all",
                        help="routing: only the routing-decision and reload figures")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rss_requests, args.rounds = 2_000, 5_000, 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "second").mkdir()
        upstream, upstream_url = start_upstream(tmp, args.upstream)
        second, second_url = start_upstream(tmp / "second", args.upstream)
        gateway = None
        try:
            root = write_fleet(tmp, upstream_url, args.cache_max_mb)
            gateway, info, ready_s = start_gateway(root)
            time.sleep(0.5)  # let start-up garbage settle before the idle RSS reading
            result = {} if args.only == "routing" else asyncio.run(
                measure(upstream_url, info["url"], info["token"], gateway.pid, args))
            result["start_to_ready_s"] = ready_s
            result["routing_decision"] = measure_routing()
            result["reload"] = asyncio.run(measure_reload(info["url"], f"authorization: Bearer {info['token']}\r\n",
                                                          root, second_url, args.cache_max_mb))
        finally:
            for proc in (gateway, upstream, second):
                if proc is not None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(10)
    result.update(python=sys.version.split()[0], cpus=os.cpu_count(), cache_max_mb=args.cache_max_mb,
                  upstream=args.upstream)
    print(json.dumps(_rounded(result), indent=1))


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    main()
