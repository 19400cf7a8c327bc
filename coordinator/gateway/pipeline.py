"""The upstream half of a request: warm-up barrier → rate limit → breaker → retry → backend.

``Pipeline.run`` drives one ``Flight``: it owns the upstream call for every request
waiting on that flight, so retries and the breaker run once per flight, not once
per client. Streams are forwarded event by event as they arrive (``Flight.push``).
A call walks its hops (``routing.py`` builds the chain and says when to move on):
when a hop's retries run out, or its circuit is open, before anything reached a
client, the next hop takes the call; each hop is logged and counted.
A failure before anything reached the clients is retried per the backend's policy;
a failure after a stream started cannot be retried (the clients already hold part
of an answer), so it ends the stream with an error event in the API's format. A
malformed event part-way (not UTF-8, data not JSON) is such a failure: it is not
passed on, the usage so far is billed, and nothing is cached. Every error that
leaves a flight has the configured provider keys redacted from it first.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..backends.base import Backend, UpstreamRequest, UpstreamResponse
from ..config import BackendConfig
from ..clock import REAL_CLOCK, Clock
from ..errors import (BackendError, FatalBackendError, MalformedEventError, RetryableError,
                      StreamBrokenError)
from .accounting import Ledger, Price, Who
from .apierrors import from_exception
from .breaker import CircuitBreaker
from .budgets import Reservation, no_reservation
from .context_cache import WarmupBarrier, pick_base_url
from .dedup import Flight, Reply
from .dialects import Dialect, StreamScanner, Usage
from .keys import Redactor
from .limits import Limiter
from .metrics import GatewayMetrics
from .retry import RetryPolicy, retry_call
from .routing import Target, fallback_reason

log = logging.getLogger("coordinator.gateway")
_SERIALS = itertools.count(1)


class Upstream:
    """One backend with the policies wrapped around it: limits, breaker, retry.

    ``serial`` names this connection (a reload that changes how the backend is
    reached builds a new ``Upstream``); dedup keys carry it, so a request never
    joins a flight, or reads an answer, of a backend it would not have called.
    """

    def __init__(self, name: str, backend: Backend, config: BackendConfig, clock: Clock = REAL_CLOCK, *,
                 limiter: Limiter | None = None) -> None:
        self.name = name
        self.backend = backend
        self.config = config
        self.serial = next(_SERIALS)
        self.limiter = limiter or Limiter(config, clock)
        self.breaker = CircuitBreaker(name, failures=config.breaker_failures, open_s=config.breaker_open_s,
                                      clock=clock)
        self.policy = RetryPolicy.for_backend(config)

    def retune(self, config: BackendConfig) -> None:
        """Take new limits, retry and breaker settings in place (same connection; docs/gateway.md, "Reload")."""
        self.config = config
        self.limiter.retune(config)
        self.breaker.retune(failures=config.breaker_failures, open_s=config.breaker_open_s)
        self.policy = RetryPolicy.for_backend(config)

    def serves(self, dialect: Dialect) -> bool:
        """Whether the backend speaks ``dialect``'s API."""
        return self.backend.serves(dialect.name)

    def note_retry(self, attempt: int, exc: RetryableError, delay_s: float) -> None:
        """Log a failed attempt that will be retried."""
        log.info("gateway: %s attempt %d failed (%s); retrying in %.2fs", self.name, attempt + 1, exc, delay_s)


@dataclass(frozen=True)
class Hop:
    """One place a call may go: an alias's target on an upstream, what it bills, and its dedup identity."""

    target: Target
    upstream: Upstream
    price: Price  # $0 on a free backend (echo)
    would_be: Price | None = None  # the alias's price when the backend is free
    identity: str = ""  # alias, model and connection: what a dedup key must tell apart

    @property
    def name(self) -> str:
        """``alias@backend``, as logs and the fallback counter name a hop."""
        return f"{self.target.alias}@{self.upstream.name}"


@dataclass
class Call:
    """What a flight sends upstream, and on whose account."""

    dialect: Dialect
    path: str
    body: dict[str, Any]  # for the first hop; a fallback hop gets its own model in it
    stream: bool
    headers: Mapping[str, str]
    query: str
    priority: int
    who: Who  # the first hop's account
    hops: list[Hop]  # the routed alias's hop, then its usable fallbacks (routing.py)
    reservation: Reservation = field(default_factory=no_reservation)  # settled when the call ends
    input_estimate: int = 0
    prefix_key: bytes = b""  # picks the server among several base_urls (per backend of the chain)
    strip_usage_chunk: bool = False
    barrier_key: bytes | None = None
    warmer: bool = field(default=False, repr=False)
    hop: Hop | None = field(default=None, repr=False)  # the hop being tried (or that answered)

    def who_for(self, hop: Hop) -> Who:
        """The account of a call made on ``hop``: the routed one's, or the fallback alias's."""
        if hop is self.hops[0]:
            return self.who
        return replace(self.who, alias=hop.target.alias, model=hop.target.model, backend=hop.upstream.name)

    def body_for(self, hop: Hop) -> dict[str, Any]:
        """The upstream body for ``hop`` (a fallback alias names its own model)."""
        if hop is self.hops[0] or self.body.get("model") == hop.target.model:
            return self.body
        return {**self.body, "model": hop.target.model}


class Pipeline:
    """Runs flights against upstreams, accounting for every attempt and every result."""

    def __init__(self, *, ledger: Ledger, metrics: GatewayMetrics, barrier: WarmupBarrier,
                 clock: Clock = REAL_CLOCK, rand: Callable[[], float] = random.random,
                 redactor: Redactor | None = None) -> None:
        self.redactor = redactor or Redactor(())
        self.ledger = ledger
        self.metrics = metrics
        self.barrier = barrier
        self.clock = clock
        self.rand = rand

    async def run(self, flight: Flight, call: Call) -> None:
        """Fill ``flight`` with the upstream's answer or error; never raises but cancellation."""
        try:
            reply = await self._call(flight, call)
        except asyncio.CancelledError:
            flight.fail(asyncio.CancelledError())
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must reach the waiters, typed or not
            self._fail(flight, call, exc)
        else:
            self._bill(call, reply.usage)
            flight.finish(reply)
        finally:
            call.reservation.release()  # after billing: what was used replaces what was held
            self._release_barrier(call, warmed=flight.started)

    def _fail(self, flight: Flight, call: Call, exc: Exception) -> None:
        exc = self.redactor.exception(exc)  # an upstream may echo the key in its error
        hop = call.hop or call.hops[0]
        if not isinstance(exc, BackendError):
            log.exception("gateway: unexpected error in a flight to %s", hop.name)
        else:
            log.warning("gateway: %s %s failed: %s", hop.name, call.path, exc)
        if isinstance(exc, StreamBrokenError) and exc.usage is not None:
            self._bill(call, exc.usage)
        if flight.started and not getattr(exc, "reported", False):
            flight.push(from_exception(exc).event(call.dialect))
        flight.fail(exc)

    def _bill(self, call: Call, usage: Usage) -> None:
        hop = call.hop or call.hops[0]
        self.ledger.record_billed(call.who_for(hop), usage, hop.price, hop.would_be)

    def _release_barrier(self, call: Call, *, warmed: bool) -> None:
        if call.warmer and call.barrier_key is not None:
            call.warmer = False
            self.barrier.release(call.barrier_key, warmed=warmed)

    async def _call(self, flight: Flight, call: Call) -> Reply:
        if call.barrier_key is not None:
            call.warmer = await self.barrier.enter(call.barrier_key)
        for index, hop in enumerate(call.hops):
            call.hop, flight.routed = hop, hop.target.alias  # a stream's header names the hop it started on
            try:
                return await retry_call(lambda n, h=hop: self._attempt(h, flight, call), hop.upstream.policy,
                                        clock=self.clock, rand=self.rand, on_retry=hop.upstream.note_retry)
            except BackendError as exc:
                reason = fallback_reason(exc, started=flight.started)
                if reason is None or index + 1 == len(call.hops):
                    raise
                self._note_fallback(hop, call.hops[index + 1], reason, exc)
        raise AssertionError("unreachable: a call has at least one hop")

    def _note_fallback(self, hop: Hop, following: Hop, reason: str, exc: BaseException) -> None:
        """One log line (no keys: the error is redacted) and one count per hop taken."""
        log.warning("gateway: falling back from %s to %s (%s): %s", hop.name, following.name, reason,
                    self.redactor.text(str(exc)))
        self.metrics.child(self.metrics.fallbacks, hop.name, following.name, reason).inc()

    async def _attempt(self, hop: Hop, flight: Flight, call: Call) -> Reply:
        """One upstream call under the limiter and the breaker."""
        upstream = hop.upstream
        permit = await upstream.limiter.acquire(call.priority, call.input_estimate)
        usage: Usage | None = None
        try:
            upstream.breaker.before_call()
            self.ledger.count_upstream_call(call.who_for(hop))
            reply = await self._send(hop, flight, call)
            usage = reply.usage
            return reply
        finally:
            upstream.limiter.release(permit, input_tokens=None if usage is None else usage.input_tokens
                                     + usage.cache_write_tokens + usage.cache_read_tokens,
                                     output_tokens=usage.output_tokens if usage else 0)

    async def _send(self, hop: Hop, flight: Flight, call: Call) -> Reply:
        upstream = hop.upstream
        request = UpstreamRequest(api=call.dialect.name, path=call.path, body=call.body_for(hop), stream=call.stream,
                                  headers=call.headers, query=call.query,
                                  base_url=pick_base_url(upstream.config.base_urls, call.prefix_key))
        started = self.clock.now()
        outcome = "error"
        try:
            # Backends bound connecting and every wait for bytes by ``timeout_s`` themselves
            # (base.py contract); a second timer here would cost ~5% of a request's CPU.
            response = await upstream.backend.send(request)
            self.metrics.child(self.metrics.latency, upstream.name).observe(self.clock.now() - started)
            if call.stream:
                reply = await self._pump(flight, call, response)
            else:
                reply = await self._whole(call, response)
            reply.routed = hop.target.alias
            outcome = "ok"
        except (RetryableError, StreamBrokenError) as exc:
            if getattr(exc, "status", None) != 429:  # rate limiting is back-pressure, not an outage
                upstream.breaker.record_failure()
            raise
        except FatalBackendError:
            upstream.breaker.record_success()  # it answered; the request was at fault
            raise
        except asyncio.CancelledError:
            upstream.breaker.record_abandoned()
            outcome = "cancelled"
            raise
        finally:
            self.metrics.child(self.metrics.upstream_outcomes, upstream.name, outcome).inc()
        upstream.breaker.record_success()
        return reply

    async def _whole(self, call: Call, response: UpstreamResponse) -> Reply:
        body = response.body or b""
        await response.aclose()
        # Only the usage is read here; the body is kept as bytes (parsed, it would take
        # several times the memory, and only a streaming client joining needs it parsed).
        return Reply(response.status, call.dialect.returned_headers(response.headers), False, body=body,
                     usage=call.dialect.usage_from_body_bytes(body))

    async def _pump(self, flight: Flight, call: Call, response: UpstreamResponse) -> Reply:
        """Forward a stream's events into the flight as they arrive."""
        scanner = call.dialect.scanner(strip_usage_chunk=call.strip_usage_chunk)
        flight.headers = call.dialect.returned_headers(response.headers)
        iterator = response.chunks.__aiter__() if response.chunks is not None else _single(response.body)
        try:
            while True:
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except (RetryableError, TimeoutError, ConnectionError) as exc:
                    raise self._stream_error(flight, scanner, exc, "stream broke") from exc
                try:
                    self._forward(flight, call, scanner, chunk)
                except MalformedEventError as exc:  # part-way: clients hold the start, so it cannot be retried
                    raise self._stream_error(flight, scanner, exc, "sent a malformed event") from exc
        finally:
            await response.aclose()
        if not scanner.complete:
            raise self._stream_error(flight, scanner, None, "stream ended before its last event")
        return Reply(response.status, flight.headers, True, events=flight.events,  # complete: shared, not copied
                     usage=scanner.usage)

    def _forward(self, flight: Flight, call: Call, scanner: StreamScanner, chunk: bytes) -> None:
        events = scanner.feed(chunk)
        if scanner.error is not None and not flight.events:
            # An error before any content (e.g. overloaded right after the headers): retryable,
            # and nothing has reached the clients yet.
            raise RetryableError(f"upstream stream error: {scanner.error.get('message', scanner.error)}",
                                 status=529 if scanner.error.get("type") == "overloaded_error" else 502)
        if events and not flight.events and not call.dialect.is_valid_first_event(events[0]):
            raise RetryableError(f"upstream sent a malformed stream (first event {events[0][:80]!r})", status=502)
        if scanner.error is not None:  # the upstream's own error event may quote the key
            events = [self.redactor.bytes(event) for event in events]
        for event in events:
            if flight.events and not call.dialect.is_well_formed_event(event):
                raise MalformedEventError(f"event {event[:80]!r} is not UTF-8 JSON", event=event)
            flight.push(event)
        if flight.events:
            self._release_barrier(call, warmed=True)

    @staticmethod
    def _stream_error(flight: Flight, scanner: StreamScanner, exc: BaseException | None, what: str) -> BackendError:
        detail = f"{what}: {exc}" if exc is not None else what
        if scanner.error is not None:
            detail = f"sent an error part-way: {scanner.error.get('message', scanner.error)}"
        if flight.events:
            return StreamBrokenError(f"upstream {detail}", usage=scanner.usage, reported=scanner.error is not None)
        retry_after = exc.retry_after_s if isinstance(exc, RetryableError) else None
        return RetryableError(f"upstream {detail}", status=502, retry_after_s=retry_after)


async def _single(body: bytes | None):
    """A stream answered as one body (a backend without chunking)."""
    if body:
        yield body
