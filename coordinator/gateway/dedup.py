"""Collapsing identical requests: single-flight, a byte-bounded TTL/LRU cache, and stream teeing.

A *flight* is one upstream call that every identical request shares. The gateway
owns it (it runs in its own task, not in any client's handler), and clients are
ref-counted waiters: a client hanging up only drops its reference, and the call is
cancelled when the last one leaves. A streaming flight keeps every SSE event it has
received, so a waiter that joins late replays the events so far and then follows
live (``Flight.follow``). A flight that completes successfully becomes a ``Reply``
in the ``ResponseCache``; a failed, cancelled or partial one never does.

The key (``dedup_key``) is a 128-bit BLAKE2b of the endpoint, where it routes (alias,
upstream model and backend connection: ``pipeline.Hop.identity``), the
headers that change the answer (the dialect's ``key_headers``) and the canonical body (sorted keys, with ``stream``
and ``metadata`` left out: Claude Code's runs of one prompt differ only in
``metadata.user_id``, and a streaming and a non-streaming request share one call).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..clock import REAL_CLOCK, Clock
from .dialects import Dialect, Usage

_IGNORED_FIELDS = ("stream", "metadata")
# Per-entry bookkeeping beyond the payload (dict slot, dataclass, list), so the byte
# bound tracks real memory rather than payload alone.
ENTRY_OVERHEAD = 640


def dedup_key(dialect: Dialect, path: str, route: str, headers: Mapping[str, str],
              body: Mapping[str, Any]) -> bytes:
    """The 128-bit identity of a request for dedup purposes (``dialect.key_headers`` change the answer)."""
    h = hashlib.blake2b(digest_size=16)
    parts = [path, route, *dialect.key_header_values(headers)]
    h.update("\0".join(parts).encode())
    canon = {k: v for k, v in body.items() if k not in _IGNORED_FIELDS}
    h.update(json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    return h.digest()


@dataclass
class Reply:
    """A complete successful upstream answer: a JSON body, or every event of a stream."""

    status: int
    headers: dict[str, str]
    stream: bool
    body: bytes | None = None
    events: list[bytes] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    routed: str = ""  # the alias that answered (x-coordinator-routed)
    # The other mode's rendering, built once on first need (stream ⇄ body).
    converted: Any = None

    @property
    def size(self) -> int:
        """Approximate bytes this reply holds in memory."""
        payload = len(self.body or b"") + sum(len(e) + 64 for e in self.events)
        return payload + ENTRY_OVERHEAD + sum(len(k) + len(v) for k, v in self.headers.items())


class ResponseCache:
    """Completed replies by key, expiring after ``ttl_s``, evicting least recently used past ``max_bytes``."""

    def __init__(self, *, ttl_s: float, max_bytes: int, clock: Clock = REAL_CLOCK) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._entries: OrderedDict[bytes, tuple[float, int, Reply]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Reply | None:
        """The cached reply for ``key``, refreshed as most recently used; None if absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, _, reply = entry
        if self.clock.now() >= expires_at:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return reply

    def put(self, key: bytes, reply: Reply) -> bool:
        """Store ``reply``; False when caching is off or it alone exceeds the bound."""
        size = reply.size
        if self.ttl_s <= 0 or size > self.max_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        while self.bytes + size > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))
        self._entries[key] = (self.clock.now() + self.ttl_s, size, reply)
        self.bytes += size
        return True

    def _drop(self, key: bytes) -> None:
        _, size, _ = self._entries.pop(key)
        self.bytes -= size


class Flight:
    """One shared upstream call: its progress, its events so far, and who waits on it."""

    def __init__(self, key: bytes | None, stream: bool) -> None:
        self.key = key
        self.stream = stream
        self.waiters = 0
        self.events: list[bytes] = []
        self.headers: dict[str, str] = {}  # the upstream's response headers, once it answered
        self.routed = ""  # the alias whose backend answered (or was tried last)
        self.reply: Reply | None = None
        self.error: BaseException | None = None
        self.started = False  # the first event (or the whole body) has arrived
        self.done = False
        self.abandoned = False
        self.served_by: str | None = None  # across gateways: "joined" (another host's call) or "hit" (its cache)
        self.task: asyncio.Task | None = None
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        # Wake every current waiter; each re-checks the state, so clearing at once is safe.
        self._changed.set()
        self._changed.clear()

    def push(self, event: bytes) -> None:
        """A stream event arrived: store it for replay and wake followers."""
        self.events.append(event)
        self.started = True
        self._notify()

    def finish(self, reply: Reply) -> None:
        """The call succeeded completely."""
        self.reply = reply
        self.started = self.done = True
        self._notify()

    def fail(self, error: BaseException) -> None:
        """The call ended in ``error`` (possibly part-way through a stream)."""
        if not self.done:
            self.error = error
            self.done = True
            self._notify()

    async def wait_started(self) -> None:
        """Return once the first event arrived or the flight ended."""
        while not (self.started or self.done):
            await self._changed.wait()

    async def wait_done(self) -> None:
        """Return once the flight ended (success or error)."""
        while not self.done:
            await self._changed.wait()

    async def follow(self) -> AsyncIterator[bytes]:
        """Everything received so far in one piece, then each new batch live, until the end."""
        async for batch in self.batches():
            yield b"".join(batch)

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """The events received so far as one list, then each new list live, until the end (event bounds kept)."""
        sent = 0
        while True:
            if sent < len(self.events):
                batch = self.events[sent:]
                sent += len(batch)
                yield batch
                continue
            if self.done:
                return
            await self._changed.wait()


class FlightTable:
    """Flights in progress by key; joining increments the waiter count."""

    def __init__(self) -> None:
        self._flights: dict[bytes, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: bytes) -> Flight | None:
        """The live flight for ``key``, if one can still be joined."""
        flight = self._flights.get(key)
        return None if flight is None or flight.abandoned else flight

    def add(self, flight: Flight) -> None:
        """Register a new flight under its key."""
        if flight.key is not None:
            self._flights[flight.key] = flight

    def remove(self, flight: Flight) -> None:
        """Forget ``flight`` (only if it is still the one registered for its key)."""
        if flight.key is not None and self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    def leave(self, flight: Flight) -> None:
        """A waiter is gone; cancel the upstream call when it was the last one."""
        flight.waiters -= 1
        if flight.waiters <= 0 and not flight.done:
            flight.abandoned = True
            self.remove(flight)
            if flight.task is not None:
                flight.task.cancel()
