"""Client connections: a cap on how many are open, and a cheap refusal past it.

Why: 20,000 half-open sockets once exhausted the gateway's file descriptors, and
every later accept failed with a traceback. Three limits close that:

* headers: a connection that has not sent a whole request's headers within
  ``[gateway] header_timeout_s`` of opening (or of its last response) is closed;
  aiohttp's keep-alive timer already closes a connection waiting for a request,
  so the gateway sets it to that timeout (``keepalive_timeout``);
* body: ``intake.read_body`` bounds the wait for a body by ``body_timeout_s``;
* count: past ``max_connections`` open connections (bounded further by the
  process's file-descriptor limit), a new connection gets a fixed 503 written
  straight to the socket and is closed: no parser, no handler, no task, no log line.
"""

from __future__ import annotations

import asyncio
import json
import resource
from typing import Any

from aiohttp import web
from aiohttp.web_runner import BaseSite

FD_HEADROOM = 64  # descriptors kept for upstream connections, state files and the listener

_BODY = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message":
                    "the gateway has too many open connections; retry later or raise [gateway] max_connections"}}
                   ).encode()
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
           b"connection: close\r\ncontent-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


def connection_cap(configured: int) -> int:
    """``configured``, lowered so that the open connections cannot use up the descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - FD_HEADROOM))


class _Refusal(asyncio.Protocol):
    """Writes the fixed 503 and closes: what a connection past the cap costs."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(REFUSAL)  # type: ignore[attr-defined]
        transport.close()


class CappedSite(web.SockSite):
    """A ``SockSite`` whose protocol factory refuses connections past ``max_connections``."""

    def __init__(self, runner: web.BaseRunner, sock: Any, *, max_connections: int, on_refuse: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(runner, sock, **kwargs)
        self.max_connections = max_connections
        self.refused = 0
        self._on_refuse = on_refuse
        self._accepting = 0  # made by the factory, not yet registered by aiohttp (a burst is accepted at once)

    async def start(self) -> None:
        """Register with the runner and serve through the capped factory (aiohttp's own start, one line changed)."""
        await BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        open_handlers = server._connections  # noqa: SLF001 - aiohttp's live handlers; .connections copies them

        loop = asyncio.get_running_loop()

        def registered() -> None:
            self._accepting -= 1

        def factory() -> asyncio.BaseProtocol:
            if len(open_handlers) + self._accepting >= self.max_connections:
                self.refused += 1
                if self._on_refuse is not None:
                    self._on_refuse()
                return _Refusal()
            # The transport schedules connection_made (which registers the handler) right after
            # this returns; two hops later it has surely run.
            self._accepting += 1
            loop.call_soon(loop.call_soon, registered)
            return server()

        self._server = await loop.create_server(factory, sock=self._sock, backlog=self._backlog)
