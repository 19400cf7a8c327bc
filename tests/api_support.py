"""Helpers for the task API tests: an echo fleet, a gateway serving it, a raw SSE reader over a socket."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from coordinator.clock import poll
from tests.conftest import coordinator_argv, subprocess_env

API = "/v1/coordinator"
SLOW_SCRIPT = """#!/bin/sh
echo started
echo $$ > "$1"
sleep 60
echo finished
"""
ECHO_FLEET = """
[fleet]
heartbeat_s = 0.5
retry_backoff_s = 0

[backends.default]
kind = "echo"
latency_ms = 5
ms_per_token = 15

[agents.llm]
kind = "llm"

[agents.slow]
kind = "command"
command = ["sh", "{root}/slow.sh", "{root}/{{task_id}}.pid"]
"""


def write_echo_fleet(root: Path, extra: str = "") -> Path:
    """An echo-backend fleet with a ``slow`` command agent that prints, writes its pid and sleeps."""
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "slow.sh").write_text(SLOW_SCRIPT)
    (root / "fleet.toml").write_text(ECHO_FLEET.format(root=root) + extra)
    return root


def wait_until(predicate: Any, timeout_s: float = 30, what: str = "condition") -> Any:
    """``predicate()`` once it is truthy (polled with ``clock.poll``), else AssertionError."""
    for _ in poll(0.02, timeout_s=timeout_s):
        value = predicate()
        if value:
            return value
    raise AssertionError(f"timed out waiting for {what}")


def start_run(root: Path, agents: int = 2) -> subprocess.Popen:
    """``coordinator run --watch`` (its embedded gateway serves the API), output to run.out."""
    out = open(root / "run.out", "ab")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(coordinator_argv("-C", str(root), "run", "-n", str(agents), "--watch", "--no-dashboard"),
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=subprocess_env(),
                            start_new_session=True)


def gateway_info(root: Path) -> dict[str, Any]:
    """url and token from gateway.json, once the gateway wrote it."""
    path = root / ".coordinator" / "gateway.json"

    def read() -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None
    return wait_until(read, 60, "gateway.json")


class RawSSE:
    """An SSE client on a bare socket (HTTP/1.0, so no chunking): frames as dicts, comments kept apart."""

    def __init__(self, url: str, path: str, token: str | None, *, last_event_id: str | None = None,
                 timeout_s: float = 30) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
        headers = [f"GET {path} HTTP/1.0", f"Host: {parts.netloc}", "Accept: text/event-stream"]
        if token:
            headers.append(f"Authorization: Bearer {token}")
        if last_event_id:
            headers.append(f"Last-Event-ID: {last_event_id}")
        self.sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        self.buffer = b""
        head = self._read_until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.comments: list[str] = []

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("stream closed")
            self.buffer += data
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def frames(self) -> Iterator[dict[str, Any]]:
        """Each frame: ``{"id", "event", "data"}`` (data parsed as JSON); ends when the server closes."""
        while True:
            try:
                raw = self._read_until(b"\n\n").decode()
            except EOFError:
                return
            frame: dict[str, Any] = {"id": None, "event": None, "data": None}
            for line in raw.split("\n"):
                key, _, value = line.partition(":")
                if key == "":
                    self.comments.append(value.strip())
                elif key in ("id", "event"):
                    frame[key] = value.strip()
                elif key == "data":
                    frame["data"] = json.loads(value.strip())
            if frame["data"] is not None:
                yield frame

    def until(self, event: str) -> list[dict[str, Any]]:
        """Frames up to and including the first ``event`` frame."""
        out = []
        for frame in self.frames():
            out.append(frame)
            if frame["event"] == event:
                return out
        raise AssertionError(f"the stream closed before an {event!r} frame: {out}")

    def close(self) -> None:
        """Hang up (the server must carry on as before)."""
        self.sock.close()
