"""The gateway server: an aiohttp app on 127.0.0.1, its state file, and ways to run it.

``Gateway`` is the library object (``coordinator run`` embeds it with
``start_in_thread``; ``coordinator gateway`` blocks in ``serve_forever``; both first
call ``keys.protect_keys``). Its ``Reloader`` builds one ``Upstream`` per
``[backends.*]`` table from the API keys in the ``env`` mapping it is given (keys go
to backends only: never to a file, and redacted from every error and log line), and
swaps in a new configuration when fleet.toml changes (``reload.py``). It serves the
inference endpoints through ``Proxy`` plus ``/metrics``, ``/healthz``, ``/health``,
``/v1/models``, the stats endpoints, ``POST /v1/coordinator/config/reload`` and the
task API (``serve/``, docs/api.md), writes ``gateway.json`` (url, pid, token;
mode 0600) and keeps ``gateway-stats.json`` current so totals and budgets survive a
restart. Connections are capped and timed (``connections.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from ..backends.base import Backend
from ..atomic import PRIVATE_DIR, PRIVATE_FILE, read_json, write_json_atomic
from ..config import FleetConfig
from ..clock import REAL_CLOCK, Clock
from ..serve import TaskApi, mount_task_api
from ..serve.access import FLEET, guarded
from .client import gateway_path, stats_path
from .accounting import Ledger, empty_stats
from .apierrors import ApiError
from .connections import CappedSite, connection_cap
from .context_cache import WarmupBarrier
from .dedup import ResponseCache
from .dialects import ANTHROPIC, DEFAULT_DIALECT, DIALECTS, OPENAI, Dialect, dialect_for_path
from .keys import Redactor, key_values, protect_keys
from .logthrottle import LogGuard, install
from .metrics import BREAKER_VALUES, GatewayMetrics
from .pipeline import Pipeline, Upstream
from .proxy import Proxy
from .reload import Reloader
from .scrape import FleetFigures
from .shared import attach_shared
from .stats_file import StatsFile
from .tokens import new_fleet_token

log = logging.getLogger("coordinator.gateway")

LISTEN_BACKLOG = 4096  # 1,000 clients connecting at once must not overflow the accept queue


class Gateway:
    """The shared inference gateway of one fleet."""

    def __init__(self, config: FleetConfig, env: Mapping[str, str], port: int | None = None, *,
                 token: str | None = None, backends: Mapping[str, Backend] | None = None,
                 clock: Clock = REAL_CLOCK, rand: Callable[[], float] = random.random) -> None:
        self.config = config
        self.port = config.gateway.port if port is None else port
        self.token = token or new_fleet_token()
        self.url = ""
        self.clock = clock
        self.metrics = GatewayMetrics()
        self.ledger = Ledger(config)
        self.metrics.watch_ledger(self.ledger.snapshot)
        self.redactor = Redactor(key_values(env, config))
        self.log_guard = LogGuard(self.redactor)
        self.cache = ResponseCache(ttl_s=config.gateway.cache_ttl_s,
                                   max_bytes=int(config.gateway.cache_max_mb * 1024 * 1024), clock=clock)
        self.barrier = WarmupBarrier(wait_s=config.gateway.warmup_wait_s, clock=clock)
        self.reloader = Reloader(config, env, clock=clock, metrics=self.metrics, redactor=self.redactor,
                                 on_apply=self._apply, note=self._note, backends=backends)
        pipeline = Pipeline(ledger=self.ledger, metrics=self.metrics, barrier=self.barrier, clock=clock, rand=rand,
                            redactor=self.redactor)
        self.proxy = Proxy(current=lambda: self.reloader.current, fleet_token=self.token, pipeline=pipeline,
                           ledger=self.ledger, metrics=self.metrics, cache=self.cache)
        self.figures = FleetFigures(config, self.metrics.fleet)
        self.stats_file = StatsFile(self.ledger, stats_path(config))
        self._runner: web.AppRunner | None = None
        self._site: CappedSite | None = None
        self._saver: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._unguard_logs: Callable[[], None] | None = None
        self.api: TaskApi | None = None  # the task API (serve/), once app() has built the routes
        self.started_at = 0
        self.shared = attach_shared(self)  # None unless [fleet] state is Redis (gateway/shared/)

    @property
    def upstreams(self) -> dict[str, Upstream]:
        """The current configuration's backends by name."""
        return self.reloader.current.upstreams

    def _apply(self, config: FleetConfig) -> None:
        """A reloaded fleet.toml's gateway-wide settings (the rest lives in its snapshot)."""
        self.ledger.config = config  # [fleet] max_usd
        self.cache.ttl_s, self.cache.max_bytes = config.gateway.cache_ttl_s, int(config.gateway.cache_max_mb * 2**20)
        self.barrier.wait_s = config.gateway.warmup_wait_s

    def _note(self, kind: str, **fields: Any) -> None:
        """One event in events.jsonl (blocking: the reloader calls it on a worker thread)."""
        if self.api is not None:
            self.api.store.append_event(kind, **fields)

    @property
    def state_path(self) -> Path:
        """``<state_dir>/gateway.json``."""
        return gateway_path(self.config)

    @property
    def stats_path(self) -> Path:
        """``<state_dir>/gateway-stats.json``."""
        return stats_path(self.config)

    def app(self) -> web.Application:
        """The aiohttp application (routes only; ``start`` serves it)."""
        # Bodies are read by intake.read_body, which enforces [gateway] max_body_mb itself.
        app = web.Application(client_max_size=self.proxy.max_body_bytes)
        for dialect in DIALECTS.values():
            for path in dialect.paths:
                app.router.add_post(path, self._inference(dialect))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/coordinator/stats", self._stats)
        app.router.add_get("/v1/coordinator/usage/{task_id}", self._usage)
        app.router.add_post("/v1/coordinator/config/reload", guarded(self._reload, FLEET, self.proxy.authenticate))
        self.api = mount_task_api(app, self.config, self.proxy.authenticate,
                                  lambda: self.ledger.check_budget(None, None, None), self.clock)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def start(self) -> None:
        """Load saved totals, bind 127.0.0.1, serve, and write gateway.json."""
        self.stats_file.load()
        if self.shared is not None:
            await self.shared.start()
        self._unguard_logs = install(self.log_guard)
        self.started_at = int(self.clock.wall())
        settings = self.config.gateway
        # handler_cancellation: a client hanging up cancels its handler, which drops its
        # reference to the flight (the flight itself runs in its own task). auto_decompress
        # off: intake inflates bodies itself, with a running cap. keepalive_timeout: the
        # header timeout (aiohttp closes a connection that has no whole request by then).
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0,
                                     auto_decompress=False, keepalive_timeout=settings.header_timeout_s)
        await self._runner.setup()
        sock = _bind(settings.host, self.port)
        site = self._site = CappedSite(self._runner, sock, backlog=LISTEN_BACKLOG,
                                       max_connections=connection_cap(settings.max_connections),
                                       on_refuse=self.metrics.rejected.labels("connections").inc)
        await site.start()
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        write_json_atomic(self.state_path, {"url": self.url, "pid": os.getpid(), "token": self.token},
                          mode=PRIVATE_FILE, indent=1)
        self._saver = asyncio.get_running_loop().create_task(self.stats_file.save_forever())
        self._watcher = asyncio.get_running_loop().create_task(self.reloader.watch_forever())
        log.info("gateway: serving on %s (%d backends)", self.url, len(self.upstreams))

    async def stop(self) -> None:
        """Stop serving, save totals, close backends, and remove gateway.json if it is ours."""
        for task in (self._saver, self._watcher):
            if task is not None:
                task.cancel()
        self._saver = self._watcher = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.shared is not None:
            await self.shared.stop()
        self.save_stats(force=True)
        await self.reloader.close()
        self._remove_state_file()
        log.info("gateway: stopped")
        if self._unguard_logs is not None:
            self._unguard_logs()
            self._unguard_logs = None

    def _remove_state_file(self) -> None:
        data = read_json(self.state_path)
        if isinstance(data, dict) and data.get("pid") == os.getpid() and data.get("token") == self.token:
            self.state_path.unlink(missing_ok=True)

    def stats(self) -> dict[str, Any]:
        """Totals and per-scope stats, with each backend's breaker and queue, and the configuration served."""
        data = self.ledger.snapshot()
        for name, upstream in self.upstreams.items():
            row = data["backends"].setdefault(name, dict(empty_stats()))
            row.update(breaker=upstream.breaker.state, in_flight=upstream.limiter.active,
                       queued=upstream.limiter.waiting)
        data["config"] = self.reloader.status()
        if self.shared is not None:
            data["shared"] = self.shared.stats()
        return data

    def save_stats(self, *, force: bool = False) -> None:
        """Write gateway-stats.json when the totals changed since the last write."""
        self.stats_file.save(force=force)

    def _authorized(self, request: web.Request) -> bool:
        return self.proxy.authenticate(request) is not None

    def _inference(self, dialect: Dialect) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The handler of ``dialect``'s endpoints: whatever goes wrong, the client gets the API's error JSON."""
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await self.proxy.handle(request, dialect)
            except (ConnectionError, asyncio.CancelledError):
                raise  # the client is gone: nobody to answer
            except Exception as exc:  # noqa: BLE001 - a bug must still answer in the API's format
                log.exception("gateway: unexpected error serving %s", request.path)
                error = ApiError(500, f"gateway error: {type(exc).__name__}: {self.redactor.text(str(exc))}")
                return web.Response(status=500, body=error.render(dialect), content_type="application/json")
        return handle

    async def _healthz(self, request: web.Request) -> web.Response:
        """The coordinator's own liveness check (any valid token)."""
        if not self._authorized(request):
            return _json_error(ApiError(401, "invalid gateway token"), _dialect_of(request))
        return web.json_response({"ok": True, "pid": os.getpid(), "url": self.url})

    async def _health(self, request: web.Request) -> web.Response:
        """What clients probe (any valid token)."""
        if not self._authorized(request):
            return _json_error(ApiError(401, "invalid gateway token"), _dialect_of(request))
        return web.json_response({"ok": True, "status": "ok", "pid": os.getpid(), "url": self.url})

    async def _models(self, request: web.Request) -> web.Response:
        """The configured ``[models]`` aliases in the asking API's list format."""
        dialect = _dialect_of(request)
        if not self._authorized(request):
            return _json_error(ApiError(401, "invalid gateway token"), dialect)
        return web.json_response(dialect.model_list(self.reloader.current.model_entries(self.started_at)))

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus text, for the fleet token only (scrape with ``authorization: Bearer <token>``)."""
        claims = self.proxy.authenticate(request)
        if claims is None or claims.task_id is not None:
            return _json_error(ApiError(401 if claims is None else 403, "metrics need the fleet token"),
                               _dialect_of(request))
        for name, upstream in self.upstreams.items():
            self.metrics.breaker.labels(name).set(BREAKER_VALUES[upstream.breaker.state])
            self.metrics.queued.labels(name).set(upstream.limiter.waiting)
        self.metrics.pending.set(self.proxy.pending)
        await self.figures.refresh()
        return web.Response(body=self.metrics.render(), headers={"content-type": self.metrics.content_type})

    async def _reload(self, request: web.Request) -> web.Response:
        """Reload fleet.toml now (the fleet token): ``{"reloaded", "generation", ...}`` or 400 ``invalid_config``."""
        status, data = await self.reloader.reload()
        return web.json_response(data, status=status)

    async def _stats(self, request: web.Request) -> web.Response:
        """Fleet-wide figures: the fleet token only (a task must not read other tasks' usage)."""
        claims = self.proxy.authenticate(request)
        if claims is None:
            return _json_error(ApiError(401, "invalid gateway token"))
        if claims.task_id is not None:
            return _json_error(ApiError(403, "the stats need the fleet token; a task token may read only "
                                             "/v1/coordinator/usage/<its task id>"))
        return web.json_response(self.stats())

    async def _usage(self, request: web.Request) -> web.Response:
        """One task's row: the fleet token, or that task's own token."""
        claims = self.proxy.authenticate(request)
        task_id = request.match_info["task_id"]
        if claims is None:
            return _json_error(ApiError(401, "invalid gateway token"))
        if claims.task_id is not None and claims.task_id != task_id:
            return _json_error(ApiError(403, f"a task token may read only its own task's usage, not {task_id!r}"))
        return web.json_response(self.ledger.task_row(task_id))

    async def _not_found(self, request: web.Request) -> web.Response:
        error = ApiError(404, f"no such endpoint: {request.method} {request.path}")
        return web.Response(status=404, content_type="application/json",
                            body=error.render(dialect_for_path(request.path)))


def _json_error(error: ApiError, dialect: Dialect = DEFAULT_DIALECT) -> web.Response:
    return web.Response(status=error.status, body=error.render(dialect), content_type="application/json",
                        headers=error.headers)


def _dialect_of(request: web.Request) -> Dialect:
    """Which API a path shared by both (``/v1/models``) is asked in: the Anthropic SDK sends anthropic-version."""
    return ANTHROPIC if "anthropic-version" in request.headers else OPENAI


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = "127.0.0.1" if host == "localhost" else host
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    return sock


class GatewayHandle:
    """A gateway running on a thread of its own: ``.url``, ``.token``, ``.gateway``, ``.stop()``."""

    def __init__(self, gateway: Gateway, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.gateway = gateway
        self.url = gateway.url
        self.token = gateway.token
        self._loop = loop
        self._thread = thread

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the gateway's loop and return its result (to read state safely)."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def is_alive(self) -> bool:
        """Whether the gateway's thread still serves."""
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the gateway and join its thread (idempotent)."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)


def start_in_thread(config: FleetConfig, env: Mapping[str, str], port: int | None = None,
                    **options: Any) -> GatewayHandle:
    """Start a gateway on a daemon thread; returns once it serves (raises if it cannot start)."""
    env = protect_keys(env, config)  # this process now holds the keys: not dumpable, not in os.environ
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            gateway = Gateway(config, env, port, **options)
            loop.run_until_complete(gateway.start())
            box["gateway"], box["loop"] = gateway, loop
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
            box["error"] = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(gateway.stop())
            _cancel_leftovers(loop)
            loop.close()

    thread = threading.Thread(target=run, name="coordinator-gateway", daemon=True)
    thread.start()
    ready.wait()
    if "error" in box:
        raise box["error"]
    return GatewayHandle(box["gateway"], box["loop"], thread)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel tasks still pending after stop (flights whose clients were cut off) and let them end."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def serve_forever(config: FleetConfig, env: Mapping[str, str], port: int | None = None, *,
                  on_ready: Callable[[Gateway], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly (what ``coordinator gateway`` runs)."""
    env = protect_keys(env, config)  # this process now holds the keys: not dumpable, not in os.environ

    async def main() -> None:
        gateway = Gateway(config, env, port)
        await gateway.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        try:
            if on_ready is not None:
                on_ready(gateway)
            await stopping.wait()
        finally:
            await gateway.stop()

    asyncio.run(main())
