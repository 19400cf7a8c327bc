"""Where a proxied request's CPU goes: minimal proxies on candidate HTTP stacks vs the gateway.

    python scripts/bench_http_stack.py [--requests N]

Each candidate runs in its own process in front of the same fake upstream as
``bench_gateway.py`` (``--upstream constant``: the cheapest possible upstream, so
nothing hides the proxy's cost). The figure that matters is the proxy process's
CPU time per request (user + sys from /proc), which is far steadier than wall-clock
throughput on a shared machine; requests per second are printed as well. Candidates:

* ``aiohttp-server+aiohttp-client``: the stack the gateway uses today;
* ``aiohttp-server+raw-client``: the same server, upstream calls over plain asyncio
  streams with keep-alive (what an HTTP/1.1-only backend transport could do);
* each of those on uvloop, when uvloop is installed;
* ``gateway``: the real gateway (every policy on) with its ``openai`` backend.

Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gateway as bench  # noqa: E402  (a sibling script, not a package)

PROXY_CODE = r'''
import asyncio, sys
from aiohttp import web, ClientSession, TCPConnector
upstream, client_kind, loop_kind = sys.argv[1:4]
if loop_kind == "uvloop":
    import uvloop
    uvloop.install()
host, port = upstream.removeprefix("http://").split(":")
pool = []

async def raw_post(body):
    reader, writer = pool.pop() if pool else await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    data = await reader.readexactly(length)
    pool.append((reader, writer))
    return data

async def main():
    session = None
    async def handle(request):
        nonlocal session
        body = await request.read()
        if client_kind == "raw":
            data = await raw_post(body)
        else:
            session = session or ClientSession(connector=TCPConnector(limit=256))
            async with session.post(upstream + "/v1/chat/completions", data=body,
                                    headers={"content-type": "application/json"}) as response:
                data = await response.read()
        return web.Response(body=data, content_type="application/json")
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_proxy(upstream_url: str, client_kind: str, loop_kind: str) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen([sys.executable, "-c", PROXY_CODE, upstream_url, client_kind, loop_kind],
                            stdout=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{proc.stdout.readline().strip()}", ""


def measure(proc: subprocess.Popen, url: str, headers: str, n: int, tag: str) -> dict:
    async def run() -> dict:
        await bench.run_load(url, headers, [bench.chat_body(f"warm-{tag}-{i}") for i in range(1000)], 32)
        before = cpu_s(proc.pid)
        elapsed, _ = await bench.run_load(url, headers, [bench.chat_body(f"{tag}-{i}") for i in range(n)], 32)
        return {"cpu_us_per_request": (cpu_s(proc.pid) - before) / n * 1e6, "rps": n / elapsed}
    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs per candidate (the lowest CPU is kept)")
    args = parser.parse_args()
    loops = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        upstream, upstream_url = bench.start_upstream(tmp, "constant")
        try:
            for attempt in range(args.repeat):
                for loop_kind in loops:
                    for client_kind in ("aiohttp", "raw"):
                        name = f"aiohttp-server+{client_kind}-client" + ("+uvloop" if loop_kind == "uvloop" else "")
                        proc, url, headers = start_proxy(upstream_url, client_kind, loop_kind)
                        _keep_best(results, name, measure(proc, url, headers, args.requests, f"{name}{attempt}"))
                        proc.kill()
                        proc.wait()
                fleet_dir = tmp / f"gateway-{attempt}"
                fleet_dir.mkdir()
                proc, info, _ = bench.start_gateway(bench.write_fleet(fleet_dir, upstream_url, 4.0))
                auth = f"authorization: Bearer {info['token']}\r\n"
                _keep_best(results, "gateway", measure(proc, info["url"], auth, args.requests, f"gw{attempt}"))
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
        finally:
            upstream.kill()
    print(json.dumps({k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in results.items()}, indent=1))


def _keep_best(results: dict[str, dict], name: str, figures: dict) -> None:
    if name not in results or figures["cpu_us_per_request"] < results[name]["cpu_us_per_request"]:
        results[name] = figures


if __name__ == "__main__":
    main()
