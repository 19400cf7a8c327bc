"""The request path: admission → dedup → (context cache, limits, breaker, retry in ``pipeline``) → response.

``Proxy.handle`` serves the three inference endpoints. It authenticates, reads the
body within its limits (``intake``) and parses it once, routes the model to a
backend, checks the admission queue, reserves the request's budget (``budgets``),
then either answers from the response cache, joins the flight already under way
for an identical request, or launches a new flight. Clients are answered in the
mode they asked for (stream or not), whatever mode the shared call used.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..config import FleetConfig, ModelAlias
from ..errors import BudgetError
from .accounting import FREE, UNASSIGNED, Ledger, Price, Who, price_for
from .apierrors import ApiError, from_exception
from .budgets import Budgets, Estimate, Reservation, no_reservation
from .intake import parse_json, read_body
from .context_cache import CHARS_PER_TOKEN, MIN_PREFIX_TOKENS, add_breakpoints, shared_prefix
from .dedup import Flight, FlightTable, Reply, ResponseCache, dedup_key
from .dialects import Dialect
from .metrics import GatewayMetrics
from .pipeline import Call, Pipeline, Upstream
from .tokens import TokenClaims, read_token

SSE_TYPE = "text/event-stream; charset=utf-8"
JSON_TYPE = "application/json"
_MAX_TOKEN_CACHE = 10_000


@dataclass(frozen=True)
class Route:
    """Where a request's model goes: the backend chain, the upstream model name, its price.

    ``would_be`` is the model's real price when the backend is free (echo): it bills
    $0 and shows that apart.
    """

    chain: list[Upstream]
    model: str
    price: Price
    would_be: Price | None = None


class Router:
    """Model aliases from fleet.toml → backend + upstream model; unknown names go to ``default``'s backend."""

    def __init__(self, config: FleetConfig, upstreams: Mapping[str, Upstream]) -> None:
        self.config = config
        self.upstreams = upstreams
        self._default_backend = (config.models["default"].backend if "default" in config.models
                                 else ("default" if "default" in upstreams else next(iter(upstreams))))
        self._prices: dict[tuple[str, str], Price] = {}  # (alias or "", model) → price, computed once

    def resolve(self, dialect: Dialect, model: Any) -> Route | ApiError:
        """The route for ``model`` on ``dialect``'s API, or a 400 naming the fix."""
        name = model if isinstance(model, str) else ""
        alias: ModelAlias | None = self.config.models.get(name)
        backend = alias.backend if alias else self._default_backend
        upstream_model = upstream_model_of(alias) if alias else name
        primary = self.upstreams[backend]
        if not primary.serves(dialect):
            return ApiError(400, f"model {name!r} routes to backend {backend!r} ({primary.backend.kind}), which does "
                                 f"not serve {dialect.title}; in fleet.toml map it under [models] to a backend "
                                 f"that does, or call the endpoint of the API that backend speaks")
        chain = [primary] + [self.upstreams[f] for f in primary.config.fallback
                             if f in self.upstreams and self.upstreams[f].serves(dialect)]
        price = self._prices.get((name if alias else "", upstream_model))
        if price is None:
            price = self._prices[(name if alias else "", upstream_model)] = price_for(upstream_model, alias)
            if len(self._prices) > _MAX_TOKEN_CACHE:  # free-form model names must not grow it forever
                self._prices.clear()
        if primary.backend.kind == "echo":
            return Route(chain, upstream_model, FREE, would_be=price)
        return Route(chain, upstream_model, price)

    def model_entries(self, created: int) -> list[tuple[str, str, int]]:
        """The configured aliases for ``GET /v1/models``: (alias, "alias → upstream model", created)."""
        return [(name, f"{name} → {upstream_model_of(alias)}", created)
                for name, alias in self.config.models.items()]


def upstream_model_of(alias: ModelAlias) -> str:
    """The alias's upstream model; unset means the current default (read from the SDK, gateway only)."""
    if alias.model is not None:
        return alias.model
    from ..backends.models import default_model  # noqa: PLC0415 - imports the anthropic SDK

    return default_model()


def _token_of(request: web.Request) -> str:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


@dataclass
class Ask:
    """An admitted request: its parsed body, route, account, token claims and budget reservation."""

    dialect: Dialect
    body: dict[str, Any]
    route: Route
    who: Who
    claims: TokenClaims
    reservation: Reservation
    input_estimate: int


class Proxy:
    """The inference endpoints of one gateway."""

    def __init__(self, *, config: FleetConfig, fleet_token: str, router: Router, pipeline: Pipeline,
                 ledger: Ledger, metrics: GatewayMetrics, cache: ResponseCache) -> None:
        self.config = config
        self.fleet_token = fleet_token
        self.router = router
        self.pipeline = pipeline
        self.ledger = ledger
        self.budgets = Budgets(ledger)
        self.metrics = metrics
        self.cache = cache
        self.flights = FlightTable()
        self.pending = 0
        self.max_body_bytes = int(config.gateway.max_body_mb * 1024 * 1024)
        self._claims: dict[str, TokenClaims | None] = {}

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
        ask = await self._admit(request, dialect, claims)
        if isinstance(ask, ApiError):
            return _error(dialect, ask)
        self.ledger.count_request(ask.who)
        self.pending += 1
        try:
            return await self._serve(request, ask)
        except RecursionError:  # the body parsed but is too deep to encode again (dedup key, upstream body)
            return _error(dialect, ApiError(400, "the request body is nested too deeply to read"))
        finally:
            self.pending -= 1
            if not ask.reservation.flight_owned:
                ask.reservation.release()

    async def _admit(self, request: web.Request, dialect: Dialect, claims: TokenClaims) -> Ask | ApiError:
        """Read and check the body, route it, and reserve its budget; or the error to answer with."""
        raw = await read_body(request, max_bytes=self.max_body_bytes, timeout_s=self.config.gateway.body_timeout_s)
        if isinstance(raw, ApiError):
            self.metrics.rejected.labels("body").inc()
            return raw
        body = parse_json(raw, dialect)
        if isinstance(body, ApiError):
            return body
        route = self.router.resolve(dialect, body.get("model"))
        if isinstance(route, ApiError):
            return route
        if self.pending >= self.config.gateway.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            return ApiError(429, f"the gateway queue is full ({self.config.gateway.max_queue} requests waiting); "
                                 f"retry later or raise [gateway] max_queue", {"retry-after": "1"})
        input_estimate = len(raw) // CHARS_PER_TOKEN
        estimate = Estimate.of(input_estimate, dialect.max_output_tokens(body), route.price)
        try:
            reservation = (self.budgets.reserve(claims, estimate) if not request.path.endswith("/count_tokens")
                           else no_reservation())
        except BudgetError as exc:
            self.metrics.rejected.labels("budget").inc()
            return from_exception(exc)
        who = Who(claims.task_id or UNASSIGNED, claims.agent, route.model, route.chain[0].name, claims.generation)
        return Ask(dialect, body, route, who, claims, reservation, input_estimate)

    async def _serve(self, request: web.Request, ask: Ask) -> web.StreamResponse:
        path, dialect, body = request.path, ask.dialect, ask.body
        stream = body.get("stream") is True and not path.endswith("/count_tokens")
        no_store = request.headers.get("x-coordinator-cache", "").strip().lower() == "no-store"
        use_dedup = self.config.gateway.dedup and not no_store
        key = dedup_key(dialect, path, ask.route.chain[0].name, request.headers, body) if use_dedup else None
        # A retried attempt (attempt 2+, or after `coordinator retry`: a new generation) must not get
        # the answer that just failed it: no cache, but joining a flight in progress is fine.
        fresh = ask.claims.attempt > 1 or ask.claims.generation > 0
        if key is not None and not fresh and (reply := self.cache.get(key)) is not None:
            self.ledger.record_shared(ask.who, "hit", reply.usage, ask.route.would_be or ask.route.price)
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
        self.flights.add(flight)
        flight.task = asyncio.get_running_loop().create_task(self._fly(flight, call))
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
        dialect, body, route = ask.dialect, ask.body, ask.route
        upstream_body = {**body, "model": route.model}
        strip_usage = stream and not dialect.streams_usage(body)
        if strip_usage:
            # Usage is needed for accounting; the chunk carrying it is kept from clients that did not ask.
            upstream_body = dialect.with_stream_usage(upstream_body)
        generates = request.path == dialect.generation_path
        auto = self.config.gateway.context_cache == "auto"
        if auto and generates and dialect.cache_marks:
            upstream_body = add_breakpoints(upstream_body)
        # The prefix hash costs a JSON dump: skip it when no barrier or routing could use it.
        big_enough = ask.input_estimate >= MIN_PREFIX_TOKENS
        routed = any(len(upstream.config.base_urls) > 1 for upstream in route.chain)
        prefix_key, prefix_tokens = shared_prefix(dialect, upstream_body) if big_enough or routed else (b"", 0)
        use_barrier = auto and generates and prefix_tokens >= MIN_PREFIX_TOKENS
        # Client headers go as they came: the backend forwards what the dialect's rules allow.
        return Call(dialect=dialect, path=request.path, body=upstream_body, stream=stream, headers=request.headers,
                    query=request.query_string, priority=_priority(request, ask.claims), who=ask.who,
                    price=route.price, would_be=route.would_be, chain=route.chain, input_estimate=ask.input_estimate,
                    prefix_key=prefix_key, strip_usage_chunk=strip_usage, reservation=ask.reservation,
                    barrier_key=prefix_key if use_barrier else None)

    async def _answer(self, request: web.Request, ask: Ask, flight: Flight, stream: bool,
                      how: str) -> web.StreamResponse:
        dialect = ask.dialect
        if stream and flight.stream:
            await flight.wait_started()
        else:
            await flight.wait_done()
        if flight.error is not None and not flight.started:
            return _error(dialect, from_exception(flight.error), how)
        if flight.reply is not None:
            response: web.StreamResponse = _respond(dialect, flight.reply, stream, ask.body, how)
        elif not stream:  # a non-streaming client of a stream that broke part-way
            return _error(dialect, from_exception(flight.error or RuntimeError("stream failed")), how)
        else:
            response = await _relay(request, flight, how)
        if how == "joined" and flight.reply is not None:  # served in full by someone else's call
            self.ledger.record_shared(ask.who, how, flight.reply.usage, ask.route.would_be or ask.route.price)
        return response


def _priority(request: web.Request, claims: TokenClaims) -> int:
    """The header's priority; a task token's signed priority can be lowered by it, never raised."""
    value = request.headers.get("x-coordinator-priority")
    try:
        wanted = int(value) if value is not None else claims.priority
    except ValueError:
        return claims.priority
    return wanted if claims.task_id is None else max(wanted, claims.priority)  # lower number = sooner


def _error(dialect: Dialect, error: ApiError, how: str | None = None) -> web.Response:
    headers = {**error.headers, "x-coordinator-dedup": how} if how else error.headers
    return web.Response(status=error.status, body=error.render(dialect), content_type=JSON_TYPE, headers=headers)


def _respond(dialect: Dialect, reply: Reply, stream: bool, body: dict[str, Any], how: str) -> web.Response:
    """A finished reply in the mode the client asked for."""
    headers = {**reply.headers, "x-coordinator-dedup": how}
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
                                                       "cache-control": "no-cache", "x-coordinator-dedup": how})
    await response.prepare(request)
    async for data in flight.follow():
        await response.write(data)
    await response.write_eof()
    return response
