"""Gateways sharing work through Redis, when things fail: a leading gateway killed mid-stream, Redis stopped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.config import load_config
from coordinator.gateway.client import GatewayInfo, read_gateway
from coordinator.gateway.server import start_in_thread
from tests.conftest import coordinator_argv, subprocess_env
from tests.fake_upstream import FakeUpstream, Stall, await_until, fake_upstream, wait_until  # noqa: F401 - fixture
from tests.gateway_support import ENV, user
from tests.redis_support import RedisServer, need_redis, redis_server  # noqa: F401 - fixture
from tests.shared_support import blocked_readers, shared_fleet_toml

MODEL = "claude-sonnet-4-6"
HEADERS = {"anthropic-version": "2023-06-01"}
LEASE_S = 1.5
CLIENT_TIMEOUT_S = 30.0  # far past the lease: a client that reaches it hung


class Client:
    """One streaming or not request whose bytes are kept as they arrive, so a test can wait for the first."""

    def __init__(self, http: httpx.AsyncClient, info: GatewayInfo, body: dict) -> None:
        self.received = b""
        self.stream = bool(body.get("stream"))
        self.task = asyncio.create_task(self._run(http, info, body))

    async def _run(self, http: httpx.AsyncClient, info: GatewayInfo, body: dict) -> bytes:
        headers = {**HEADERS, "x-api-key": info.token}
        async with http.stream("POST", f"{info.url}/v1/messages", json=body, headers=headers) as response:
            async for chunk in response.aiter_bytes():
                self.received += chunk
        return self.received


@pytest.fixture
def gateway_processes(make_fleet: Callable[..., Path], fake_upstream: FakeUpstream,
                      redis_server: RedisServer) -> Iterator[Callable[[str], tuple[subprocess.Popen, GatewayInfo]]]:
    """``start(host)`` → a `coordinator gateway` process for that host's fleet root, on the shared Redis."""
    redis_server.flush()
    procs: list[subprocess.Popen] = []

    def start(host: str) -> tuple[subprocess.Popen, GatewayInfo]:
        root = make_fleet(shared_fleet_toml(fake_upstream.url, redis_server.url, "crash",
                                            gateway={"shared_lease_s": LEASE_S}), name=host)
        env = subprocess_env(COORDINATOR_HOST=host, **ENV)
        proc = subprocess.Popen(coordinator_argv("-C", str(root), "gateway"), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        procs.append(proc)
        config = load_config(root)
        wait_until(lambda: proc.poll() is None and (read_gateway(config) or None) is not None, 30,
                   f"the gateway of {host} to serve")
        info = read_gateway(config)
        assert info is not None and info.pid == proc.pid
        return proc, info

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def _body(prompt: str, stream: bool) -> dict:
    return {"model": MODEL, "max_tokens": 64, "messages": user(prompt), "stream": stream}


def test_kill_9_of_the_leading_gateway_mid_stream_ends_every_follower_within_the_lease(
        gateway_processes, fake_upstream, redis_server) -> None:
    fake_upstream.script(Stall(after_events=2), Stall(after_events=2))  # both leaders' calls stop mid-stream
    leader, a = gateway_processes("host-a")
    _, b = gateway_processes("host-b")

    async def main() -> tuple[list[tuple[bool, bytes]], list[tuple[bool, bytes]]]:
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as http:
            # Two keys, both led by host-a and stalled part-way.
            leads = [Client(http, a, _body(prompt, True)) for prompt in ("one", "two")]
            await await_until(lambda: all(c.received for c in leads), 20, "both leaders' streams under way")
            # "one": host-b's first client streams, so its clients get the events so far at once.
            sent = [Client(http, b, _body("one", True))]
            await await_until(lambda: sent[0].received, 20, "host-b replaying the stream of one")
            sent += [Client(http, b, _body("one", i % 2 == 0)) for i in range(4)]
            # "two": host-b's first client does not stream, so host-b sends nothing until the end.
            quiet = [Client(http, b, _body("two", False))]
            await await_until(lambda: blocked_readers(redis_server) >= 2, 20, "host-b following both keys")
            quiet += [Client(http, b, _body("two", i % 2 == 0)) for i in range(4)]
            await asyncio.sleep(0.2)  # not a timing assumption: later joiners only widen what is checked
            os.kill(leader.pid, signal.SIGKILL)
            leader.wait(10)
            await asyncio.gather(*(c.task for c in leads), return_exceptions=True)  # cut off with host-a
            return ([(c.stream, await c.task) for c in sent], [(c.stream, await c.task) for c in quiet])

    partial, whole = asyncio.run(main())
    for streamed, data in partial:  # "one": the start, then an error event (or the API's error JSON)
        if streamed:
            assert data.startswith(b"event: message_start") and b"event: error" in data
            assert b"message_stop" not in data
        else:
            assert json.loads(data)["type"] == "error"
    for streamed, data in whole:  # "two": host-b took over, and every client got a whole answer
        if streamed:
            assert data.rstrip().endswith(b'{"type":"message_stop"}') and b"event: error" not in data
        else:
            assert json.loads(data)["content"][0]["text"] == "reply to: two"
    assert {streamed for streamed, _ in partial} == {streamed for streamed, _ in whole} == {True, False}
    assert len(fake_upstream.calls) == 3  # the two stalled calls and host-b's own call for "two"


def test_with_redis_stopped_a_gateway_dedups_alone_says_so_and_shares_again_when_it_is_back(
        tmp_path: Path, make_fleet: Callable[..., Path], fake_upstream: FakeUpstream) -> None:
    need_redis()
    server = RedisServer(tmp_path / "redis").start()
    root = make_fleet(shared_fleet_toml(fake_upstream.url, server.url, "fallback"), name="host-a")
    gw = start_in_thread(load_config(root), ENV)
    try:
        def shared() -> dict:
            return gw.call(gw.gateway.stats)["shared"]

        assert shared()["up"] is True and _gauge(gw) == 1
        server.kill()
        wait_until(lambda: not shared()["up"], 10, "the gateway to notice Redis is gone")
        assert _identical_requests(gw, fake_upstream, 20) == 1  # local dedup still collapses them
        report = _status(root)
        assert report["gateway"]["shared"]["degraded"] is True and _gauge(gw) == 0
        assert any(p.startswith("gateway degraded") for p in report["problems"])
        server.start()  # the same port, from its AOF
        wait_until(lambda: shared()["up"], 10, "the gateway to notice Redis is back")
        assert _gauge(gw) == 1 and _status(root)["gateway"]["shared"]["degraded"] is False
        _identical_requests(gw, fake_upstream, 2, prompt="after")
        wait_until(lambda: server.client().keys("coordinator:{fleet:fallback}:gw:cache:*"), 10,
                   "the answer in the shared cache")  # shared again
    finally:
        gw.stop()
        server.stop()


def _identical_requests(gw, fake: FakeUpstream, n: int, prompt: str = "alone") -> int:
    """``n`` identical requests held at the upstream until all wait; the upstream calls they made."""
    before = len(fake.calls)
    fake.gate.close()

    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as http:
            tasks = [asyncio.create_task(http.post(f"{gw.url}/v1/messages", json=_body(prompt, i % 2 == 0),
                                                   headers={**HEADERS, "x-api-key": gw.token})) for i in range(n)]
            await await_until(lambda: gw.gateway.proxy.pending == n, 20, f"{n} requests waiting")
            fake.gate.open()
            return [r.status_code for r in await asyncio.gather(*tasks)]

    assert set(asyncio.run(main())) == {200}
    return len(fake.calls) - before


def _status(root: Path) -> dict:
    run = subprocess.run(coordinator_argv("-C", str(root), "status", "--json"), capture_output=True, text=True,
                         env=subprocess_env(), timeout=60)
    return json.loads(run.stdout)


def _gauge(gw) -> int:
    metrics = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {gw.token}"}).text
    line = next(line for line in metrics.splitlines() if line.startswith("coordinator_gateway_shared_state_up "))
    return int(float(line.split()[1]))
