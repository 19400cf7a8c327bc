"""The request path: admission → dedup → (context cache, limits, breaker, retry in ``pipeline``) → response.

``Proxy.handle`` serves the three inference endpoints. It takes the current
configuration (a ``Snapshot``: the request keeps it to the end, whatever reloads
meanwhile), authenticates, reads the body within its limits (``intake``) and
parses it once, checks the admission queue, routes it (``routing.py``: rules, the
requested alias, downgrades while the task's budget does not fit), reserves its
budget at the routed alias (``budgets``), then either answers from the response
cache, joins the flight already under way for an identical request to the same
place, or launches a new flight. Clients are answered in the mode they asked for
(stream or not), whatever mode the shared call used; every routed response names
its alias in ``x-coordinator-routed``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import BudgetError
from .accounting import UNASSIGNED, Ledger, Who
from .apierrors import ApiError, from_exception
from .budgets import Budgets, Estimate, Reservation, no_reservation
from .intake import parse_json, read_body
from .context_cache import CHARS_PER_TOKEN, MIN_PREFIX_TOKENS, add_breakpoints, shared_prefix
from .dedup import Flight, FlightTable, Reply, ResponseCache, dedup_key
from .dialects import Dialect
from .metrics import GatewayMetrics
from .pipeline import Call, Hop, Pipeline
from .routing import Decision, Facts, Fits, Target
from .snapshot import Snapshot
from .tokens import TokenClaims, read_token

SSE_TYPE = "text/event-stream; charset=utf-8"
JSON_TYPE = "application/json"
ROUTED = "x-coordinator-routed"
_MAX_TOKEN_CACHE = 10_000
MB = 1024 * 1024


def _token_of(request: web.Request) -> str:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


@dataclass
class Ask:
    """An admitted request: its configuration, parsed body, route, account, token claims and reservation."""

    snapshot: Snapshot
    dialect: Dialect
    body: dict[str, Any]
    decision: Decision
    hops: list[Hop]
    who: Who
    claims: TokenClaims
    reservation: Reservation
    input_estimate: int

    @property
    def routed(self) -> str:
        """The alias routing picked (the header of answers that did not come from a hop)."""
        return self.decision.target.alias


class Proxy:
    """The inference endpoints of one gateway."""

    def __init__(self, *, current: Callable[[], Snapshot], fleet_token: str, pipeline: Pipeline,
                 ledger: Ledger, metrics: GatewayMetrics, cache: ResponseCache) -> None:
        self.current = current  # the configuration new requests run on (reload.py swaps it)
        self.fleet_token = fleet_token
        self.pipeline = pipeline
        self.ledger = ledger
        self.budgets = Budgets(ledger)
        self.metrics = metrics
        self.cache = cache
        self.flights = FlightTable()
        self.pending = 0
        self._claims: dict[str, TokenClaims | None] = {}

    @property
    def max_body_bytes(self) -> int:
        """``[gateway] max_body_mb`` of the current configuration, in bytes."""
        return int(self.current().config.gateway.max_body_mb * MB)

    def authenticate(self, request: web.Request) -> TokenClaims | None:
        """The claims of the request's token, or None (→ 401). Verified tokens are remembered."""
        token = _token_of(request)
        if token in self._claims:
            return self._claims[token]
        claims = read_token(self.fleet_token, token)
        if claims is not None:
            if len(self._claims) >= _MAX_TOKEN_CACHE:
                self._claims.clear()
            self._claims[token] = claims
        return claims

    async def handle(self, request: web.Request, dialect: Dialect) -> web.StreamResponse:
        """Serve one inference request end to end."""
        claims = self.authenticate(request)
        if claims is None:
            self.metrics.rejected.labels("auth").inc()
            return _error(dialect, ApiError(401, "invalid gateway token: use the token from gateway.json or a task "
                                             "token the coordinator issued (x-api-key or Authorization: Bearer)"))
        snapshot = self.current()
        snapshot.users += 1  # its backends stay open while this request is admitted and launched
        try:
            ask = await self._admit(request, dialect, claims, snapshot)
            if isinstance(ask, ApiError):
                return _error(dialect, ask)
            self.ledger.count_request(ask.who)
            self.metrics.child(self.metrics.routed, ask.routed, ask.decision.how).inc()
            self.pending += 1
            try:
                return await self._serve(request, ask)
            except RecursionError:  # the body parsed but is too deep to encode again (dedup key, upstream body)
                return _error(dialect, ApiError(400, "the request body is nested too deeply to read"), routed=ask.routed)
            finally:
                self.pending -= 1
                if not ask.reservation.flight_owned:
                    ask.reservation.release()
        finally:
            snapshot.users -= 1

    async def _admit(self, request: web.Request, dialect: Dialect, claims: TokenClaims,
                     snapshot: Snapshot) -> Ask | ApiError:
        """Read and check the body, route it, and reserve its budget; or the error to answer with."""
        settings = snapshot.config.gateway
        raw = await read_body(request, max_bytes=int(settings.max_body_mb * MB), timeout_s=settings.body_timeout_s)
        if isinstance(raw, ApiError):
            self.metrics.rejected.labels("body").inc()
            return raw
        body = parse_json(raw, dialect)
        if isinstance(body, ApiError):
            return body
        if self.pending >= settings.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            return ApiError(429, f"the gateway queue is full ({settings.max_queue} requests waiting); "
                                 f"retry later or raise [gateway] max_queue", {"retry-after": "1"})
        input_estimate = len(raw) // CHARS_PER_TOKEN
        billed = not request.path.endswith("/count_tokens")
        max_output = dialect.max_output_tokens(body)
        fits = self._fits(snapshot, claims, input_estimate, max_output) if billed else None
        facts = Facts(claims.labels, claims.priority if claims.task_id else _priority(request, claims),
                      claims.agent_name, input_estimate)
        try:
            decision = snapshot.table.decide(facts, body.get("model"), fits)
            hops = snapshot.hops(decision.target, dialect)
            if not hops:
                return _unserved(decision, snapshot, dialect)
            reservation = (self.budgets.reserve(claims, Estimate.of(input_estimate, max_output, hops[0].price))
                           if billed else no_reservation())
        except BudgetError as exc:
            self.metrics.rejected.labels("budget").inc()
            return from_exception(exc)
        target = hops[0].target
        who = Who(claims.task_id or UNASSIGNED, claims.agent, target.model, hops[0].upstream.name, claims.generation,
                  target.alias)
        return Ask(snapshot, dialect, body, decision, hops, who, claims, reservation, input_estimate)

    def _fits(self, snapshot: Snapshot, claims: TokenClaims, input_estimate: int, max_output: object) -> Fits | None:
        """The budget check routing follows downgrades with (None when no budget applies to this token)."""
        if not self.budgets.applies(claims):
            return None

        def fits(target: Target) -> BudgetError | None:
            estimate = Estimate.of(input_estimate, max_output, snapshot.billing_price(target))
            return self.budgets.refusal(claims, estimate)
        return fits

    async def _serve(self, request: web.Request, ask: Ask) -> web.StreamResponse:
        path, dialect, body = request.path, ask.dialect, ask.body
        stream = body.get("stream") is True and not path.endswith("/count_tokens")
        no_store = request.headers.get("x-coordinator-cache", "").strip().lower() == "no-store"
        use_dedup = ask.snapshot.config.gateway.dedup and not no_store
        key = dedup_key(dialect, path, ask.hops[0].identity, request.headers, body) if use_dedup else None
        # A retried attempt (attempt 2+, or after `coordinator retry`: a new generation) must not get
        # the answer that just failed it: no cache, but joining a flight in progress is fine.
        fresh = ask.claims.attempt > 1 or ask.claims.generation > 0
        if key is not None and not fresh and (reply := self.cache.get(key)) is not None:
            self.ledger.record_shared(ask.who, "hit", reply.usage, ask.hops[0].would_be or ask.hops[0].price)
            return _respond(dialect, reply, stream, body, "hit")
        flight = self.flights.get(key) if key is not None else None
        how = "joined"
        if flight is None:
            flight, how = self._launch(key, request, ask, stream), "miss"
        flight.waiters += 1
        try:
            return await self._answer(request, ask, flight, stream, how)
        finally:
            self.flights.leave(flight)

    def _launch(self, key: bytes | None, request: web.Request, ask: Ask, stream: bool) -> Flight:
        call = self._build_call(request, ask, stream)
        ask.reservation.flight_owned = True  # settled by the pipeline when the call ends
        flight = Flight(key, stream)
        flight.routed = ask.hops[0].target.alias
        self.flights.add(flight)
        snapshot = ask.snapshot
        snapshot.users += 1  # the flight runs on the configuration its request was admitted on
        flight.task = asyncio.get_running_loop().create_task(self._fly(flight, call))
        flight.task.add_done_callback(lambda _: setattr(snapshot, "users", snapshot.users - 1))  # even if never run
        return flight

    async def _fly(self, flight: Flight, call: Call) -> None:
        self.metrics.in_flight.inc()
        try:
            await self.pipeline.run(flight, call)
        finally:
            self.metrics.in_flight.dec()
            self.flights.remove(flight)
            if flight.reply is not None and flight.key is not None and not flight.abandoned:
                self.cache.put(flight.key, flight.reply)
                self.metrics.cache_bytes.set(self.cache.bytes)

    def _build_call(self, request: web.Request, ask: Ask, stream: bool) -> Call:
        dialect, body, hops = ask.dialect, ask.body, ask.hops
        upstream_body = {**body, "model": hops[0].target.model}
        strip_usage = stream and not dialect.streams_usage(body)
        if strip_usage:
            # Usage is needed for accounting; the chunk carrying it is kept from clients that did not ask.
            upstream_body = dialect.with_stream_usage(upstream_body)
        generates = request.path == dialect.generation_path
        auto = ask.snapshot.config.gateway.context_cache == "auto"
        if auto and generates and dialect.cache_marks:
            upstream_body = add_breakpoints(upstream_body)
        # The prefix hash costs a JSON dump: skip it when no barrier or routing could use it.
        big_enough = ask.input_estimate >= MIN_PREFIX_TOKENS
        routed = any(len(hop.upstream.config.base_urls) > 1 for hop in hops)
        prefix_key, prefix_tokens = shared_prefix(dialect, upstream_body) if big_enough or routed else (b"", 0)
        use_barrier = auto and generates and prefix_tokens >= MIN_PREFIX_TOKENS
        # Client headers go as they came: the backend forwards what the dialect's rules allow.
        return Call(dialect=dialect, path=request.path, body=upstream_body, stream=stream, headers=request.headers,
                    query=request.query_string, priority=_priority(request, ask.claims), who=ask.who,
                    hops=hops, input_estimate=ask.input_estimate,
                    prefix_key=prefix_key, strip_usage_chunk=strip_usage, reservation=ask.reservation,
                    barrier_key=prefix_key if use_barrier else None)

    async def _answer(self, request: web.Request, ask: Ask, flight: Flight, stream: bool,
                      how: str) -> web.StreamResponse:
        dialect = ask.dialect
        if stream and flight.stream:
            await flight.wait_started()
        else:
            await flight.wait_done()
        # The header says who answered: a flight this request started may have been answered by another host.
        shown = flight.served_by if how == "miss" and flight.served_by else how
        if flight.error is not None and not flight.started:
            return _error(dialect, from_exception(flight.error), shown, flight.routed)
        if flight.reply is not None:
            response: web.StreamResponse = _respond(dialect, flight.reply, stream, ask.body, shown)
        elif not stream:  # a non-streaming client of a stream that broke part-way
            return _error(dialect, from_exception(flight.error or RuntimeError("stream failed")), shown, flight.routed)
        else:
            response = await _relay(request, flight, shown)
        if how == "joined" and flight.reply is not None:  # served in full by someone else's call
            self.ledger.record_shared(ask.who, how, flight.reply.usage, ask.hops[0].would_be or ask.hops[0].price)
        return response


def _priority(request: web.Request, claims: TokenClaims) -> int:
    """The header's priority; a task token's signed priority can be lowered by it, never raised."""
    value = request.headers.get("x-coordinator-priority")
    try:
        wanted = int(value) if value is not None else claims.priority
    except ValueError:
        return claims.priority
    return wanted if claims.task_id is None else max(wanted, claims.priority)  # lower number = sooner


def _error(dialect: Dialect, error: ApiError, how: str | None = None, routed: str = "") -> web.Response:
    headers = {**error.headers, "x-coordinator-dedup": how} if how else error.headers
    if routed:
        headers = {**headers, ROUTED: routed}
    return web.Response(status=error.status, body=error.render(dialect), content_type=JSON_TYPE, headers=headers)


def _unserved(decision: Decision, snapshot: Snapshot, dialect: Dialect) -> ApiError:
    """400 for a request routed to a backend that does not speak its API, naming why it went there and the fix."""
    target = decision.target
    kind = snapshot.upstreams[target.backend].backend.kind
    if decision.rule is not None:
        rule = snapshot.table.rules[decision.rule].label(decision.rule)
        fix = f"{rule} sends it to alias {target.alias!r}; give the rule agent or labels conditions that keep " \
              f"{dialect.title} requests away, or point the alias at a backend that serves them"
    else:
        fix = "in fleet.toml map it under [models] to a backend that does, or call the endpoint of the API " \
              "that backend speaks"
    return ApiError(400, f"model {decision.requested!r} routes to backend {target.backend!r} ({kind}), which does "
                         f"not serve {dialect.title}; {fix}")


def _respond(dialect: Dialect, reply: Reply, stream: bool, body: dict[str, Any], how: str) -> web.Response:
    """A finished reply in the mode the client asked for."""
    headers = {**reply.headers, "x-coordinator-dedup": how, ROUTED: reply.routed}
    if stream:
        if reply.stream:
            payload = b"".join(reply.events)
        else:
            events = dialect.body_to_events(_body_of(dialect, reply), include_usage=dialect.streams_usage(body))
            payload = b"".join(events)
        return web.Response(status=reply.status, body=payload, headers={**headers, "content-type": SSE_TYPE,
                                                                          "cache-control": "no-cache"})
    if not reply.stream:
        return web.Response(status=reply.status, body=reply.body, headers={**headers, "content-type": JSON_TYPE})
    return web.Response(status=reply.status, body=json.dumps(_body_of(dialect, reply)).encode(),
                        headers={**headers, "content-type": JSON_TYPE})


def _body_of(dialect: Dialect, reply: Reply) -> dict[str, Any]:
    """The reply as a parsed body, folding a stream once and remembering it."""
    if reply.converted is None:
        reply.converted = dialect.events_to_body(reply.events) if reply.stream else json.loads(reply.body or b"{}")
    return reply.converted


async def _relay(request: web.Request, flight: Flight, how: str) -> web.StreamResponse:
    """Replay what the stream delivered so far, then follow it live."""
    response = web.StreamResponse(status=200, headers={**flight.headers, "content-type": SSE_TYPE,
                                                       "cache-control": "no-cache", "x-coordinator-dedup": how,
                                                       ROUTED: flight.routed})
    await response.prepare(request)
    async for data in flight.follow():
        await response.write(data)
    await response.write_eof()
    return response
