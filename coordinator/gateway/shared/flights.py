"""In-flight dedup across gateways: one host leads a request key's call, the others replay its stream.

``SharedFlights.run`` stands in for ``Pipeline.run``: it fills a local ``Flight`` (so every
client of this host still shares it as before), but first asks Redis who answers the
key (``lua/lead.lua``, one round trip):

- a reply another host cached → the flight finishes with it (a hit);
- nobody → this host *leads*: it holds ``lock:<key>`` (``SET NX PX lease``, renewed every
  third of the lease while the call runs), runs the pipeline, and a publisher appends
  each batch of events the flight receives (the bytes its own clients get) to the
  stream ``flight:<id>``, then one last entry: the reply's status, headers and usage
  (and body), or the error, or "abandoned" when this host's clients all left and the
  call was cancelled; the stream then expires and the lock is freed;
- another host leads → this host *follows*: it reads that stream from the start with
  ``XREAD BLOCK`` and pushes the events into the flight, byte for byte, then finishes
  with the last entry's reply (or fails with its error, the same API error).

When the leader dies (its lock expires, or it said "abandoned", or Redis went away)
before the last entry: a follower that has sent nothing to its clients takes over
(asks again: it may lead now, or follow whoever took over first); one whose clients
already hold part of a stream ends it with an error event. A follower checks the lock
each time a read blocks for ``block_s`` without news, so nothing waits longer than the
lease plus one block. A flight whose clients do not stream buffers the remote events
instead of pushing them, so it can always take over.

Redis down: the pipeline alone (local dedup), and ``budgets``, ``limits``, ``cache``
likewise fall back. A flight holds its budget fleet-wide before it asks who answers
(``budgets.SharedBudgets.hold``), and settles when it ends (what it cost: nothing
unless this host made the call).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Coroutine
from typing import Any

from ...clock import REAL_CLOCK, Clock
from ...errors import BudgetError, StreamBrokenError
from ..accounting import Ledger, Price
from ..apierrors import from_exception
from ..dedup import Flight
from ..dialects import Usage
from ..pipeline import Call, Pipeline
from .budgets import SharedBudgets, claims_of
from .cache import SharedCache
from .codec import pack_error, pack_events, pack_reply, unpack_error, unpack_events, unpack_reply
from .link import RedisLink, SharedDown

log = logging.getLogger("coordinator.gateway")

DONE_TTL_S = 60.0  # a finished stream stays this long for followers still replaying it
MAX_BLOCK_S = 1.0
LEADER_GONE = ("the gateway leading this call on another host stopped mid-stream; nothing more will come, "
               "send the request again")


class SharedFlights:
    """Runs flights across gateways (the ``Pipeline.run`` interface), leading or following by key."""

    def __init__(self, pipeline: Pipeline, link: RedisLink, *, lease_s: float, cache: SharedCache,
                 budgets: SharedBudgets, ledger: Ledger, clock: Clock = REAL_CLOCK) -> None:
        self.pipeline = pipeline
        self.link = link
        self.cache = cache
        self.budgets = budgets
        self.ledger = ledger
        self.clock = clock
        self.lease_s = lease_s
        self.lease_ms = str(max(1, int(lease_s * 1000)))
        self.block_ms = max(1, int(min(MAX_BLOCK_S, lease_s / 2) * 1000))
        self.stream_ttl_ms = str(int((lease_s + DONE_TTL_S) * 1000))
        self.done_ttl_ms = str(int(DONE_TTL_S * 1000))
        self._tasks: set[asyncio.Task] = set()

    async def run(self, flight: Flight, call: Call) -> None:
        """Fill ``flight``: from another host's call, a shared cached reply, or this host's own call."""
        if flight.key is None or not self.link.up:
            return await self.pipeline.run(flight, call)
        try:
            hold = await self.budgets.hold(call.reservation)
        except BudgetError as exc:
            call.reservation.release()
            flight.fail(exc)
            return None
        led = False
        try:
            led = await self._share(flight, call)
        except asyncio.CancelledError:  # every client here left: as Pipeline.run, the flight ends
            flight.fail(asyncio.CancelledError())
            raise
        finally:
            call.reservation.release()
            usage = _billed(flight) if led else None
            hop = call.hop or call.hops[0]  # the hop that answered bills it (pipeline.py)
            self._spawn(self.budgets.settle(hold, hop.price.usd(usage) if usage else 0.0,
                                            usage.total if usage else 0))
        return None

    async def _share(self, flight: Flight, call: Call) -> bool:
        """Answer the flight one way or another; True when this host made the upstream call."""
        assert flight.key is not None
        key = flight.key.hex()
        claims = claims_of(call.reservation)
        fresh = claims is not None and (claims.attempt > 1 or claims.generation > 0)  # as proxy.py: no cached answer
        while True:
            fid = secrets.token_hex(8)
            args = [fid, self.lease_ms, "1" if self.cache.enabled and not fresh else "0"]
            try:
                role, value = await self.link.run(lambda: self.link.script("lead")(
                    keys=[self.link.key("lock", key), self.cache.key(key)], args=args))
            except SharedDown:
                await self.pipeline.run(flight, call)
                return True
            if role == b"cached":
                reply = unpack_reply(value)
                self.ledger.record_shared(call.who, "hit", reply.usage, _saved_at(call))
                flight.served_by = "hit"
                flight.finish(reply)
                return False
            if role == b"lead":
                self._spawn(self._publish(flight, key, fid))
                await self.pipeline.run(flight, call)
                return True
            flight.served_by = "joined"  # before any event: the clients' headers say so
            if await self._follow(flight, call, key, value.decode()):
                return False
            flight.served_by = None  # nothing was sent: this host asks again, and may lead
            log.info("gateway: the call leading %s on another host is gone; this host takes over", key[:8])

    # -- leading ---------------------------------------------------------------------------------

    async def _publish(self, flight: Flight, key: str, fid: str) -> None:
        """Mirror the flight's events into its stream, then its end; renew the lock meanwhile."""
        lock, stream = self.link.key("lock", key), self.link.key("flight", fid)
        renewer = self._spawn(self._renew(flight, lock, stream, fid))
        try:
            first = True
            async for batch in flight.batches():
                fields: dict[str, Any] = pack_events(batch)
                if first:
                    fields["h"] = json.dumps(flight.headers)
                    first = False
                pairs = [item for pair in fields.items() for item in pair]
                await self.link.run(lambda: self.link.script("append")(keys=[stream],
                                                                        args=[self.stream_ttl_ms, *pairs]))
            await self._land(flight, key, lock, stream, fid)
        except SharedDown:
            return  # followers see the lock lapse: they take over or end their streams
        finally:
            renewer.cancel()

    async def _land(self, flight: Flight, key: str, lock: str, stream: str, fid: str) -> None:
        if flight.reply is not None and not flight.abandoned:
            await self.cache.put(key, flight.reply)  # before the lock goes: a repeat then hits the cache
            field, value = "f", pack_reply(flight.reply, with_events=False)
        elif flight.abandoned or isinstance(flight.error, asyncio.CancelledError) or flight.error is None:
            field, value = "a", b""
        else:
            field, value = "e", pack_error(flight.error)
        await self.link.run(lambda: self.link.script("land")(keys=[lock, stream],
                                                              args=[fid, field, value, self.done_ttl_ms]))

    async def _renew(self, flight: Flight, lock: str, stream: str, fid: str) -> None:
        while not flight.done:
            await self.clock.sleep(self.lease_s / 3)
            if flight.done:
                return
            try:
                ours = await self.link.run(lambda: self.link.script("renew")(
                    keys=[lock, stream], args=[fid, self.lease_ms, self.stream_ttl_ms]))
            except SharedDown:
                return
            if not ours:
                log.warning("gateway: lost the lead of %s (its lease lapsed); other hosts took over", lock[-32:-24])
                return

    # -- following -------------------------------------------------------------------------------

    async def _follow(self, flight: Flight, call: Call, key: str, fid: str) -> bool:
        """Replay the leader's stream into ``flight``; False when the leader died and we may take over."""
        lock, stream = self.link.key("lock", key), self.link.key("flight", fid)
        events: list[bytes] = []
        last = b"0-0"
        while True:
            try:
                entries = await self._read(stream, last, self.block_ms)
                if not entries and not await self._is_led(lock, fid):
                    entries = await self._read(stream, last, None)  # whatever came just before it went
                    if not entries:
                        break
            except SharedDown:
                break
            for entry_id, fields in entries:
                last = entry_id
                if b"d" in fields:
                    self._receive(flight, fields, events)
                elif b"a" not in fields:
                    self._end(flight, call, fields, events)
                    return True
                else:
                    return self._orphaned(flight, call)
        return self._orphaned(flight, call)

    async def _read(self, stream: str, last: bytes, block_ms: int | None) -> list[tuple[bytes, dict]]:
        found = await self.link.run(lambda: self.link.client.xread({stream: last}, block=block_ms))
        if not found:
            return []
        return found[0][1]  # [[stream, [(id, fields), ...]]] (RESP2, the client's protocol)

    async def _is_led(self, lock: str, fid: str) -> bool:
        """Whether the flight's leader still holds its lock."""
        holder = await self.link.run(lambda: self.link.client.get(lock))
        return holder is not None and holder.decode() == fid

    @staticmethod
    def _receive(flight: Flight, fields: dict[bytes, bytes], events: list[bytes]) -> None:
        batch = unpack_events(fields)
        if b"h" in fields:
            flight.headers = json.loads(fields[b"h"])
        events.extend(batch)
        if flight.stream:  # clients that do not stream wait for the end: keep it to ourselves till then
            for event in batch:
                flight.push(event)

    def _end(self, flight: Flight, call: Call, fields: dict[bytes, bytes], events: list[bytes]) -> None:
        if b"e" in fields:
            flight.fail(unpack_error(fields[b"e"]))
            return
        reply = unpack_reply(fields[b"f"], events)
        self.ledger.record_shared(call.who, "joined", reply.usage, _saved_at(call))
        flight.finish(reply)

    @staticmethod
    def _orphaned(flight: Flight, call: Call) -> bool:
        """The leader is gone: end a stream our clients hold part of (True), or take over (False)."""
        if not flight.events:
            return False
        error = StreamBrokenError(LEADER_GONE)
        flight.push(from_exception(error).event(call.dialect))
        flight.fail(error)
        return True

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _saved_at(call: Call) -> Price:
    """The price a request served by another host's call saves at (the routed hop's, as proxy.py's)."""
    return call.hops[0].would_be or call.hops[0].price


def _billed(flight: Flight) -> Usage | None:
    """What this host's call was billed: the reply's usage, or a broken stream's usage so far."""
    if flight.reply is not None:
        return flight.reply.usage
    usage = getattr(flight.error, "usage", None)
    return usage if isinstance(usage, Usage) else None
