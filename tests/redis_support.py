"""Real ``redis-server`` processes for the Redis store's tests.

Each server runs on a free loopback port in its own folder, with AOF on and no
RDB snapshots (``--appendonly yes --save ""``), so a test can kill -9 it and
restart it from its AOF. Locally the tests skip when ``redis-server`` (or
redis-py) is absent; CI sets ``COORDINATOR_REQUIRE_REDIS=1``, which turns the
skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.clock import poll

REQUIRE_ENV = "COORDINATOR_REQUIRE_REDIS"
START_TIMEOUT_S = 20.0


def redis_missing() -> str | None:
    """Why the Redis tests cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    try:
        import redis  # noqa: F401, PLC0415
    except ImportError:
        return "redis-py is not installed (pip install -e '.[dev]')"
    return None


def need_redis() -> None:
    """Skip the calling test without Redis, or fail when CI requires it."""
    why = redis_missing()
    if why is None:
        return
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{REQUIRE_ENV} is set but {why}")
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process: start, kill -9 and restart (from its AOF), flush."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.folder = folder
        self.extra = extra
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--appendonly", "yes", "--save", "", "--daemonize", "no", "--loglevel", "warning", *self.extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in poll(0.02, timeout_s=START_TIMEOUT_S):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.proc.stderr.read().decode()[-500:]}")
            if self._answers():
                return self
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {START_TIMEOUT_S}s")

    def _answers(self) -> bool:
        import redis  # noqa: PLC0415

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except (redis.AuthenticationError, redis.ResponseError):
            return True  # it answers, and wants a password
        except redis.ConnectionError:
            return False

    def client(self):  # noqa: ANN201  (redis.Redis)
        import redis  # noqa: PLC0415

        return redis.Redis(port=self.port, decode_responses=True)

    def flush(self) -> None:
        self.client().flushall()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session (per xdist worker); tests flush it before use."""
    need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()
