"""Issue 14 against a real gateway process: gzip floods, oversized bodies, key protection, slowloris, log floods."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from coordinator.clock import poll
from coordinator.config import load_config
from coordinator.gateway.keys import Redactor, is_dumpable
from coordinator.gateway.logthrottle import LogGuard
from tests.fake_upstream import fake_upstream, wait_until  # noqa: F401 - fixture
from tests.gateway_support import ANTHROPIC_KEY, OPENAI_KEY, fleet_toml, start_gateway, user  # noqa: F401

MODEL = "claude-sonnet-4-6"
BOMB_MB = 200


def _gzip_bomb(megabytes: int) -> bytes:
    """A gzip body that inflates to ``megabytes`` MB of zeros (about 0.1% of that on the wire)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1024 * 1024)
    return b"".join(packer.compress(block) for _ in range(megabytes)) + packer.flush()


_GATEWAY_CODE = ("import sys; from coordinator.config import load_config; "
                 "from coordinator.gateway.server import serve_forever; "
                 "serve_forever(load_config(sys.argv[1]), {'ANTHROPIC_API_KEY': sys.argv[2], "
                 "'OPENAI_API_KEY': sys.argv[3]})")


@pytest.fixture
def gateway_process(make_fleet, fake_upstream) -> Iterator[tuple[subprocess.Popen, dict, Path]]:
    """``coordinator gateway`` as its own process (what holds the keys), with keys in its environment too."""
    root = make_fleet(fleet_toml(fake_upstream.url, gateway={"max_body_mb": 16}))
    env = {**os.environ, "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "OPENAI_API_KEY": OPENAI_KEY}
    proc = subprocess.Popen([sys.executable, "-c", _GATEWAY_CODE, str(root), ANTHROPIC_KEY, OPENAI_KEY], env=env,
                            stderr=subprocess.DEVNULL)
    state = root / ".coordinator" / "gateway.json"
    try:
        wait_until(lambda: state.exists() and json.loads(state.read_text())["pid"] == proc.pid, 20, "gateway.json")
        yield proc, json.loads(state.read_text()), root
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _post(info: dict, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(info["url"] + "/v1/messages", content=body, timeout=60,
                      headers={"x-api-key": info["token"], "content-type": "application/json", **(headers or {})})


def test_a_gzip_flood_is_refused_with_413_json_and_memory_returns_to_idle(gateway_process) -> None:
    proc, info, _ = gateway_process
    rss = psutil.Process(proc.pid).memory_info
    ok = json.dumps({"model": MODEL, "max_tokens": 8, "messages": user("warm up")}).encode()
    assert _post(info, ok).status_code == 200
    small = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    gz = small.compress(ok) + small.flush()
    assert _post(info, gz, {"content-encoding": "gzip"}).status_code == 200  # gzip itself works
    idle = rss().rss
    bomb = _gzip_bomb(BOMB_MB)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _post(info, bomb, {"content-encoding": "gzip"}), range(12)))
    assert {a.status_code for a in answers} == {413}
    error = answers[0].json()
    assert error["type"] == "error" and error["error"]["type"] == "request_too_large"
    assert "max_body_mb" in error["error"]["message"]
    for _ in poll(0.05, timeout_s=10):
        if rss().rss <= idle * 1.2:
            break
    assert rss().rss <= idle * 1.2, f"RSS {rss().rss / 1e6:.1f} MB after the flood, idle was {idle / 1e6:.1f} MB"


def test_a_body_declared_past_the_limit_is_refused_before_it_is_sent(gateway_process) -> None:
    _, info, _ = gateway_process
    host, port = info["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {info['token']}\r\n"
                     f"content-type: application/json\r\ncontent-length: {64 * 1024 * 1024}\r\n\r\n{{".encode())
        head = sock.recv(65536).decode()  # answered without the 64 MB ever being sent
    assert head.startswith("HTTP/1.1 413") and "application/json" in head
    assert json.loads(head.split("\r\n\r\n", 1)[1])["error"]["code"] == "invalid_request_error"


_HOLDER = ("import os, sys; sys.path.insert(0, sys.argv[1]); from coordinator.gateway.keys import make_undumpable; "
           "sys.argv[2] == 'protect' and make_undumpable(); print('ready', flush=True); sys.stdin.read()")
_READER = "import sys; sys.stdout.buffer.write(open(f'/proc/{sys.argv[1]}/environ', 'rb').read())"
SYSTEM_PYTHON = "/usr/bin/python3"


def _same_user_read(protect: bool) -> subprocess.CompletedProcess:
    """An ordinary user's process holding a key (protected or not), and another of that user reading its environ.

    Root can read any process's environ (CAP_SYS_PTRACE), so when the tests run as
    root both run as ``nobody``, the same-user case the gateway defends against.
    """
    python, user = (SYSTEM_PYTHON, "nobody") if os.geteuid() == 0 else (sys.executable, None)
    holder = subprocess.Popen([python, "-c", _HOLDER, str(Path(__file__).parent.parent), "protect" if protect else "-"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, user=user, cwd="/",
                              env={"PATH": os.environ.get("PATH", ""), "ANTHROPIC_API_KEY": ANTHROPIC_KEY})
    try:
        assert holder.stdout.readline() == b"ready\n"
        return subprocess.run([python, "-c", _READER, str(holder.pid)], capture_output=True, user=user, cwd="/",
                              timeout=30)
    finally:
        holder.communicate(b"")


@pytest.mark.skipif(os.geteuid() == 0 and not Path(SYSTEM_PYTHON).exists(), reason="needs an unprivileged python")
def test_a_non_dumpable_process_hides_its_environ_from_another_process_of_the_same_user() -> None:
    control = _same_user_read(protect=False)
    assert control.returncode == 0 and ANTHROPIC_KEY.encode() in control.stdout  # what an agent's child did
    attempt = _same_user_read(protect=True)
    assert attempt.returncode != 0 and b"PermissionError" in attempt.stderr
    assert ANTHROPIC_KEY.encode() not in attempt.stdout


def test_the_gateway_process_makes_itself_non_dumpable_and_drops_the_key_variables(make_fleet, fake_upstream) -> None:
    code = ("import os, sys; from coordinator.config import load_config; from coordinator.gateway.keys import "
            "is_dumpable; from coordinator.gateway.server import serve_forever; "
            "ready = lambda gw: (print(is_dumpable(), 'ANTHROPIC_API_KEY' in os.environ, "
            "'OPENAI_API_KEY' in os.environ, 'PATH' in os.environ, flush=True), os.kill(os.getpid(), 15)); "
            "serve_forever(load_config(sys.argv[1]), dict(os.environ), on_ready=ready)")
    root = make_fleet(fleet_toml(fake_upstream.url))
    env = {**os.environ, "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "OPENAI_API_KEY": OPENAI_KEY}
    done = subprocess.run([sys.executable, "-c", code, str(root)], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False", "False", "True"], done.stderr


def test_start_in_thread_protects_the_embedding_process_and_keeps_the_keys_for_its_backends(make_fleet, fake_upstream,
                                                                                              monkeypatch) -> None:
    """``coordinator run`` embeds the gateway, so that process must do the same (in a child: it is for good)."""
    code = ("import os, sys, anthropic; from coordinator.config import load_config; "
            "from coordinator.gateway.keys import is_dumpable; from coordinator.gateway.server import start_in_thread; "
            "gw = start_in_thread(load_config(sys.argv[1]), dict(os.environ)); "
            "reply = anthropic.Anthropic(base_url=gw.url, api_key=gw.token, max_retries=0).messages.create("
            "model='claude-sonnet-4-6', max_tokens=8, messages=[{'role': 'user', 'content': 'hi'}]); "
            "print(is_dumpable(), 'ANTHROPIC_API_KEY' in os.environ, 'OPENAI_API_KEY' in os.environ, "
            "'PATH' in os.environ, bool(reply.content)); gw.stop()")
    root = make_fleet(fleet_toml(fake_upstream.url))
    env = {**os.environ, "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "OPENAI_API_KEY": OPENAI_KEY}
    done = subprocess.run([sys.executable, "-c", code, str(root)], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False", "False", "True", "True"], done.stderr
    sent = fake_upstream.calls[-1].headers
    assert ANTHROPIC_KEY in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))
    assert is_dumpable() is not None  # Linux: the check above meant something


def test_slow_headers_are_cut_off_after_the_header_timeout(start_gateway) -> None:
    gw = start_gateway(gateway={"header_timeout_s": 0.5})
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n")  # and never the rest
        assert slow.recv(1024) == b""  # closed by the gateway (the 10 s socket timeout would raise instead)
    wait_until(lambda: not gw.gateway._runner.server.connections, 5, "the connection to be forgotten")


def test_connections_past_the_cap_get_a_fixed_503_and_the_gateway_serves_again_after(start_gateway) -> None:
    gw = start_gateway(gateway={"max_connections": 4})
    host, port = gw.url.removeprefix("http://").split(":")
    held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(4)]
    try:
        wait_until(lambda: len(gw.gateway._runner.server.connections) == 4, 5, "four open connections")
        with socket.create_connection((host, int(port)), timeout=10) as extra:
            answer = b""
            while chunk := extra.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503") and b"max_connections" in answer
        assert gw.gateway._site.refused == 1
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: not gw.gateway._runner.server.connections, 5, "the held connections to close")
    assert httpx.get(gw.url + "/health", headers={"x-api-key": gw.token}).json()["ok"] is True


def test_a_repeated_error_is_logged_once_per_interval_with_a_count_and_keys_are_redacted(caplog) -> None:
    now = [0.0]
    guard = LogGuard(Redactor([ANTHROPIC_KEY]), interval_s=10, clock=lambda: now[0])
    logger = logging.getLogger("coordinator.gateway")
    logger.addFilter(guard)
    caplog.set_level(logging.WARNING, "coordinator.gateway")
    try:
        for n in range(1000):
            logger.warning("upstream said %s (%d)", f"bad key {ANTHROPIC_KEY}", n)
        now[0] = 11.0
        logger.warning("upstream said %s (%d)", "again", 1000)
        logger.error("something else")
    finally:
        logger.removeFilter(guard)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["upstream said bad key [redacted] (0)",
                     "upstream said again (1000) (999 more like this in the last 10 s were not logged)",
                     "something else"]
