"""A real local fake upstream: Anthropic Messages + OpenAI Chat Completions on 127.0.0.1.

An aiohttp app served from a background thread with its own event loop, so tests
(sync or async) talk to it over real sockets. Tests script it per call::

    fake.script(Reply(429, headers={"retry-after": "7"}), Hang())   # next two calls
    fake.gate.close()          # default answers wait until fake.gate.open()
    wait_until(lambda: fake.held == 1)

When the script is empty, ``fake.responder`` (if set) may answer from the request:
``fake.responder = lambda call: {"content": [...], "stop_reason": "tool_use"}`` sends
that message (streamed when asked), None falls through to the default answer, from
``coordinator.backends.synthetic`` ("reply to: <first 40 chars of last user text>")
with usage and Anthropic prompt-cache accounting (``coordinator.backends.prompt_cache``,
the same rules the echo backend applies; ``fake.prompt_cache`` takes an injected clock).

Behaviours: ``Reply(status, json, headers)``, ``Hang()``, ``Slow(delay_s)``,
``Reset()``, ``Malformed()``, ``CutStream(after_events)``, ``Stall(after_events)``,
``BadEvent(raw, after_events)``.
Counters: ``in_flight``, ``held`` (waiting at the gate), ``completed``, ``cancelled``
(the client went away before the answer was finished), ``cache_writes``, ``cache_reads``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from coordinator.backends.prompt_cache import PromptCache
from coordinator.backends.synthetic import Answer, synthesize
from coordinator.gateway.dialects import Dialect, dialect_for_path


@dataclass(frozen=True)
class Reply:
    """Answer with ``status``; ``json`` None means the API's error JSON (status ≥ 400) or the default answer."""

    status: int
    json: Any = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Hang:
    """Never answer; wait until the client goes away."""


@dataclass(frozen=True)
class Slow:
    """The default answer, after ``delay_s``."""

    delay_s: float


@dataclass(frozen=True)
class Reset:
    """Drop the connection (TCP RST) without sending a response."""


@dataclass(frozen=True)
class Malformed:
    """200 with a body that is not JSON (or, for a stream, not the API's SSE)."""


@dataclass(frozen=True)
class CutStream:
    """Send ``after_events`` SSE events (half the body when not streaming), then drop the connection."""

    after_events: int = 2


@dataclass(frozen=True)
class Stall:
    """Send ``after_events`` SSE events, then wait until the client goes away."""

    after_events: int = 2


@dataclass(frozen=True)
class BadEvent:
    """Stream the answer, with ``raw`` (a malformed event) sent after ``after_events`` good ones."""

    raw: bytes = b"data: {this is not json\n\n"
    after_events: int = 2


@dataclass
class Call:
    """One request the fake received."""

    path: str
    query: str
    headers: dict[str, str]
    json: Any
    behaviour: Any = None
    aborted: bool = False  # the fake itself dropped the connection (Reset, CutStream)


class Gate:
    """Holds default answers while closed; safe to toggle from the test thread."""

    def __init__(self) -> None:
        self._is_open = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the server's event loop, where the held answers wait."""
        self._loop = loop

    def close(self) -> None:
        """Hold every default answer from now on."""
        self._is_open = False

    def open(self) -> None:
        """Release the held answers and let new ones through."""
        self._is_open = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = asyncio.Event()

    async def wait(self) -> None:
        """Return once the gate is open (runs in the server's loop)."""
        while not self._is_open:
            if self._event is None:
                self._event = asyncio.Event()
            await self._event.wait()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.005)


async def await_until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """``wait_until`` for coroutines: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)


class FakeUpstream:
    """A scripted Anthropic/OpenAI upstream served on 127.0.0.1 from its own thread."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.prompt_cache = PromptCache(clock=clock)
        self.gate = Gate()
        self.calls: list[Call] = []
        self.url = ""
        self.in_flight = self.held = self.completed = self.cancelled = 0
        self.responder: Callable[[Call], dict[str, Any] | None] | None = None
        self._script: deque[Any] = deque()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def cache_writes(self) -> int:
        """Calls that wrote a prompt-cache prefix."""
        return self.prompt_cache.writes

    @property
    def cache_reads(self) -> int:
        """Calls that read a prompt-cache prefix."""
        return self.prompt_cache.reads

    def script(self, *behaviours: Any) -> None:
        """Queue behaviours for the next calls, in order."""
        self._script.extend(behaviours)

    def reset(self) -> None:
        """Forget calls, script, counters and the prompt cache; open the gate."""
        self._script.clear()
        self.calls.clear()
        self.in_flight = self.held = self.completed = self.cancelled = 0
        self.prompt_cache = PromptCache(clock=self.prompt_cache.clock)
        self.gate.open()

    def start(self) -> FakeUpstream:
        """Serve on a random port; returns once it accepts connections."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def stop(self) -> None:
        """Cancel calls still running, stop serving and join the thread."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self.gate.bind(loop)
        asyncio.set_event_loop(loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._handle)
        app.router.add_post("/v1/messages/count_tokens", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        # handler_cancellation: a client hanging up cancels its handler, which is what
        # lets tests observe that an upstream call was abandoned.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # port 0 → the OS's pick
        self.url = f"http://127.0.0.1:{port}"
        ready.set()
        loop.run_forever()
        loop.close()

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.gate.open()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        behaviour = self._script.popleft() if self._script else None
        call = Call(request.path, request.query_string, {k.lower(): v for k, v in request.headers.items()},
                    body, behaviour)
        self.calls.append(call)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.in_flight += 1
        try:
            response = await self._respond(request, call)
            self.completed += 1
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            if not call.aborted:
                self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
            self._tasks.discard(task)

    async def _respond(self, request: web.Request, call: Call) -> web.StreamResponse:
        behaviour, dialect = call.behaviour, dialect_for_path(call.path)
        if isinstance(behaviour, Reply) and (behaviour.json is not None or behaviour.status >= 400):
            payload = (json.dumps(behaviour.json).encode() if behaviour.json is not None
                       else dialect.error_body(behaviour.status, f"scripted {behaviour.status}"))
            return web.Response(status=behaviour.status, body=payload, headers=behaviour.headers,
                                content_type="application/json")
        if isinstance(behaviour, Hang):
            await asyncio.Event().wait()  # until the client goes away and the handler is cancelled
        if isinstance(behaviour, Reset):
            return await _abort(request, call)
        if isinstance(behaviour, Malformed):
            return await _malformed(request, self._is_stream(call))
        if isinstance(behaviour, Slow):
            await asyncio.sleep(behaviour.delay_s)
        await self._pass_gate()
        message = self.responder(call) if self.responder is not None and behaviour is None else None
        if message is not None:
            return await self._send_message(request, call, dialect, message)
        answer = self._answer(call, dialect)
        extra = behaviour.headers if isinstance(behaviour, Reply) else None
        if answer.is_stream:
            return await self._stream(request, call, answer, extra)
        if isinstance(behaviour, CutStream):
            return await _cut_body(request, call, answer.body or b"")
        return web.Response(status=answer.status, body=answer.body, headers=extra,
                            content_type="application/json")

    async def _send_message(self, request: web.Request, call: Call, dialect: Dialect,
                            message: dict[str, Any]) -> web.StreamResponse:
        """A responder's message, completed with the fields the API always sends, as JSON or SSE."""
        body = {"id": dialect.message_id("fake", f"{next(self._ids):06d}"), "type": "message", "role": "assistant",
                "model": (call.json or {}).get("model", "fake"), "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 10}, **message}
        if not self._is_stream(call):
            return web.Response(status=200, body=json.dumps(body).encode(), content_type="application/json")
        response = web.StreamResponse(status=200, headers={"content-type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        for event in dialect.body_to_events(body):
            await response.write(event)
        await response.write_eof()
        return response

    async def _pass_gate(self) -> None:
        self.held += 1
        try:
            await self.gate.wait()
        finally:
            self.held -= 1

    def _is_stream(self, call: Call) -> bool:
        return isinstance(call.json, dict) and bool(call.json.get("stream"))

    def _answer(self, call: Call, dialect: Dialect) -> Answer:
        stream = self._is_stream(call) and not call.path.endswith("/count_tokens")
        message_id = dialect.message_id("fake", f"{next(self._ids):06d}")
        return synthesize(dialect.name, call.path, call.json, stream, message_id=message_id,
                          cache=self.prompt_cache, prefix="reply to: ", cap_chars=40)

    async def _stream(self, request: web.Request, call: Call, answer: Answer,
                      extra: dict[str, str] | None) -> web.StreamResponse:
        headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", **(extra or {})}
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        behaviour = call.behaviour
        limit = behaviour.after_events if isinstance(behaviour, (CutStream, Stall)) else None
        for sent, (event, _) in enumerate(answer.events):
            if isinstance(behaviour, BadEvent) and sent == behaviour.after_events:
                await response.write(behaviour.raw)
            if limit is not None and sent == limit:
                if isinstance(behaviour, Stall):
                    await asyncio.Event().wait()
                return await _abort(request, call, rst=False)
            await response.write(event)
        await response.write_eof()
        return response


async def _abort(request: web.Request, call: Call, *, rst: bool = True) -> web.StreamResponse:
    """Drop the connection, then wait to be cancelled (the connection is gone).

    ``rst`` sends a TCP reset (nothing answered); otherwise a plain close (FIN) after
    flushing, so the client surely receives what was sent before the cut.
    """
    call.aborted = True
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if rst and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if rst:
            transport.abort()
        else:
            transport.close()
    await asyncio.Event().wait()
    raise AssertionError("unreachable: the aborted connection cancels this handler")


async def _malformed(request: web.Request, stream: bool) -> web.StreamResponse:
    if not stream:
        return web.Response(status=200, body=b"<html>upstream proxy error</html>", content_type="application/json")
    response = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: {this is not json\n\n")
    await response.write_eof()
    return response


async def _cut_body(request: web.Request, call: Call, body: bytes) -> web.StreamResponse:
    """Promise the whole body in content-length, send half of it, drop the connection."""
    response = web.StreamResponse(status=200, headers={"content-type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    return await _abort(request, call, rst=False)


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A started ``FakeUpstream``, stopped after the test."""
    fake = FakeUpstream().start()
    try:
        yield fake
    finally:
        fake.stop()
