"""Live configuration: the gateway reloads fleet.toml without a restart (DESIGN §12, docs/gateway.md "Reload").

Triggers, all through ``Reloader.reload``: the file changing on disk (``ConfigWatch``,
looked at every ``WATCH_S``), ``coordinator reload`` and ``POST
/v1/coordinator/config/reload`` (the fleet token; the MCP ``configure`` tool writes
fleet.toml, then posts). The whole file is parsed and checked first, off the event
loop. A file with errors is refused with its one-line error: the old configuration
keeps serving, and the refusal is kept for ``status`` and written to events.jsonl.
A good file becomes a new ``Snapshot``, swapped in at once:

* requests and flights already admitted finish on the snapshot they started with;
* a backend whose table is unchanged keeps its ``Upstream`` (limiter, breaker, pool);
  one whose limits, retry or breaker settings changed is retuned in place (buckets keep
  their level, the circuit its state, waiters their place); one whose connection
  changed (``CONNECTION_KEYS``) gets a new backend and a fresh breaker, and keeps its
  limiter, because the quota belongs to the account, not to the socket; a new backend
  starts fresh; a replaced or removed one drains: it is closed once no snapshot that
  uses it has a request in progress;
* routing, aliases, prices, [gateway] request settings and [fleet] max_usd apply to
  the next request; keys bound when the server started (``RESTART_KEYS``) are
  reported as needing a restart.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..backends.base import Backend
from ..clock import Clock
from ..config import BackendConfig, FleetConfig, load_config
from ..config_watch import ConfigWatch
from ..errors import ConfigError
from .keys import Redactor, key_values, protect_keys
from .metrics import GatewayMetrics
from .pipeline import Upstream
from .routing import RoutingTable
from .snapshot import Snapshot

log = logging.getLogger("coordinator.gateway")

WATCH_S = 1.0
CONNECTION_KEYS = ("kind", "base_url", "api_key_env", "timeout_s", "latency_ms", "ms_per_token")
RESTART_KEYS = (("gateway", "host"), ("gateway", "port"), ("gateway", "max_connections"),
                ("gateway", "header_timeout_s"), ("fleet", "state_dir"), ("fleet", "state"), ("fleet", "state_name"))
Note = Callable[..., None]  # note(kind, **fields): one event in events.jsonl (blocking; run off the loop)


class Reloader:
    """Owns the current ``Snapshot``: builds the first, swaps in reloaded ones, drains retired ones."""

    def __init__(self, config: FleetConfig, env: Mapping[str, str], *, clock: Clock, metrics: GatewayMetrics,
                 redactor: Redactor, on_apply: Callable[[FleetConfig], None], note: Note,
                 backends: Mapping[str, Backend] | None = None) -> None:
        self.env, self.clock, self.metrics, self.redactor = env, clock, metrics, redactor
        self.on_apply, self.note = on_apply, note
        # Wraps the limiter of a backend a reload adds (gateway/shared/: the fleet-wide buckets), as at start.
        self.wrap_limiter: Callable[[str, Any, BackendConfig], Any] | None = None
        self.watch = ConfigWatch(config.config_path)
        made = backends or {name: _make_backend(name, cfg, env) for name, cfg in config.backends.items()}
        upstreams = {name: self._upstream(name, backend, config.backends[name]) for name, backend in made.items()}
        self.current = Snapshot(1, config, upstreams, loaded_at=clock.wall())
        self.metrics.config_generation.set(1)
        self.refused: dict[str, Any] | None = None
        self.retired: list[Snapshot] = []
        self.closed: set[int] = set()  # serials of the connections drained and closed
        self._lock = asyncio.Lock()

    def status(self) -> dict[str, Any]:
        """What ``status`` shows: the generation served, when it was loaded, and a standing refusal."""
        return {"generation": self.current.generation, "loaded_at": self.current.loaded_at,
                "refused": self.refused, "draining": sum(1 for s in self.retired if s.users)}

    async def reload(self) -> tuple[int, dict[str, Any]]:
        """Read fleet.toml and apply it, or refuse it: (HTTP status, the JSON answer)."""
        async with self._lock:
            try:
                content, signature = await asyncio.to_thread(self.watch.read)
                self.watch.see(content, signature)  # what is parsed now is what the next look compares with
                if content is None:
                    raise OSError(f"cannot read {self.watch.path}")
                config, table = await asyncio.to_thread(self._prepare, self.current.config, content)
                snapshot = self._build(config, table)
            except ConfigError as exc:
                return 400, await self._refuse(str(exc))
            except OSError:  # fleet.toml is a folder, unreadable, gone
                return 400, await self._refuse(f"{self.current.config.config_path}: cannot read it; "
                                               "make it a readable TOML file")
            self.refused = None
            if snapshot is None:
                return 200, {"reloaded": True, "generation": self.current.generation, "changed": []}
            answer = await self._swap(snapshot)
        await self.drain()
        return 200, answer

    async def _swap(self, snapshot: Snapshot) -> dict[str, Any]:
        """Serve ``snapshot`` from the next request on; the old one drains. The answer to the reload."""
        old, config = self.current, snapshot.config
        self.current = snapshot
        self.retired.append(old)
        self.on_apply(config)
        self.metrics.config_generation.set(snapshot.generation)
        self.metrics.config_reloads.labels("reloaded").inc()
        changed = _changed(old.config, config)
        restart = [f"{section}.{key}" for section, key in RESTART_KEYS
                   if getattr(getattr(old.config, section), key) != getattr(getattr(config, section), key)]
        log.info("gateway: fleet.toml reloaded (generation %d; changed: %s)", snapshot.generation,
                 ", ".join(changed) or "nothing")
        await self._note("config_reloaded", generation=snapshot.generation, changed=changed, restart_needed=restart)
        return {"reloaded": True, "generation": snapshot.generation, "changed": changed, "restart_needed": restart}

    def _prepare(self, current: FleetConfig, content: bytes) -> tuple[FleetConfig, RoutingTable]:
        """Off the loop: parse and check the file, price every alias, import the backends' modules."""
        config = load_config(current.root, content=content).with_state_password(current.state_password)
        table = RoutingTable(config)
        for name in config.models:
            table.target(name)  # an alias without a model reads the default one from the SDK: import it here
        from ..backends import auto_kind  # noqa: PLC0415

        for backend in config.backends.values():
            importlib.import_module(f"coordinator.backends.{auto_kind(backend, self.env)}")
        return config, table

    def _build(self, config: FleetConfig, table: RoutingTable) -> Snapshot | None:
        """The next snapshot (None when nothing changed); ConfigError (a missing key) before anything changes."""
        old = self.current
        if _same(old.config, config):
            return None
        env = protect_keys(self.env, config)  # a new api_key_env's variable leaves os.environ too
        fresh = {name: _make_backend(name, cfg, env) for name, cfg in config.backends.items()
                 if name not in old.upstreams or not _same_connection(old.upstreams[name].config, cfg)}
        self.redactor.learn(key_values(env, config))
        upstreams = {}
        for name, cfg in config.backends.items():
            before = old.upstreams.get(name)
            if name in fresh:
                upstreams[name] = self._upstream(name, fresh[name], cfg, before)
            else:
                assert before is not None
                if before.config != cfg:
                    before.retune(cfg)
                upstreams[name] = before
        return Snapshot(old.generation + 1, config, upstreams, table, loaded_at=self.clock.wall())

    def _upstream(self, name: str, backend: Backend, config: BackendConfig, before: Upstream | None = None) -> Upstream:
        limiter = before.limiter if before is not None else None
        if limiter is not None:
            limiter.retune(config)
        upstream = Upstream(name, backend, config, self.clock, limiter=limiter)
        if limiter is None and self.wrap_limiter is not None:
            upstream.limiter = self.wrap_limiter(name, upstream.limiter, config)
        upstream.limiter.observe_wait = self.metrics.child(self.metrics.limiter_wait, name).observe
        return upstream

    async def _refuse(self, error: str) -> dict[str, Any]:
        self.refused = {"error": error, "at": self.clock.wall(), "generation": self.current.generation}
        self.metrics.config_reloads.labels("refused").inc()
        log.warning("gateway: fleet.toml refused; still serving generation %d: %s", self.current.generation, error)
        await self._note("config_refused", error=error, generation=self.current.generation)
        return {"error": {"type": "invalid_config", "message": error}}

    async def _note(self, kind: str, **fields: Any) -> None:
        try:
            await asyncio.to_thread(self.note, kind, **fields)
        except Exception as exc:  # noqa: BLE001 - a lost event must not undo a reload (disk full, Redis down)
            log.warning("gateway: could not record %s in the event log: %s", kind, exc)

    async def drain(self) -> None:
        """Close the backends that only idle retired snapshots still name."""
        idle = [s for s in self.retired if s.users <= 0]
        if not idle:
            return
        self.retired = [s for s in self.retired if s.users > 0]
        live = {u.serial for s in (self.current, *self.retired) for u in s.upstreams.values()}
        for snapshot in idle:
            for upstream in snapshot.upstreams.values():
                if upstream.serial not in live and upstream.serial not in self.closed:
                    self.closed.add(upstream.serial)
                    log.info("gateway: backend %r (connection %d) drained; closing it", upstream.name, upstream.serial)
                    await upstream.backend.aclose()

    async def watch_forever(self) -> None:
        """Reload when fleet.toml changes on disk; drain retired snapshots; every ``WATCH_S``.

        The first look reloads unconditionally: the configuration this gateway was
        given may be older than the file (``coordinator run`` restarting its gateway
        with the config it read at start), and a reload of the same content is a no-op.
        """
        changed: Callable[[], bool] = lambda: self.watch.digest is not None  # noqa: E731
        while True:
            try:
                if changed():
                    await self.reload()
                await self.drain()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad turn
                log.exception("gateway: watching fleet.toml failed; trying again in %.0fs", WATCH_S)
            changed = self.watch.changed
            await asyncio.sleep(WATCH_S)

    async def close(self) -> None:
        """Close every backend (the gateway is stopping)."""
        for snapshot in self.retired:
            snapshot.users = 0
        self.retired.append(self.current)
        self.current = Snapshot(self.current.generation, self.current.config, {})
        await self.drain()


def _make_backend(name: str, config: BackendConfig, env: Mapping[str, str]) -> Backend:
    from ..backends import make_backend  # noqa: PLC0415 - backend modules may pull in slow SDKs

    return make_backend(name, config, env)


def _same(a: FleetConfig, b: FleetConfig) -> bool:
    return a.model_dump(exclude={"root"}) == b.model_dump(exclude={"root"})


def _same_connection(a: BackendConfig, b: BackendConfig) -> bool:
    return all(getattr(a, key) == getattr(b, key) for key in CONNECTION_KEYS)


def _changed(old: FleetConfig, new: FleetConfig) -> list[str]:
    """``backends.NAME`` for each backend added, removed or changed, then each other table that changed."""
    names = sorted(set(old.backends) | set(new.backends))
    out = [f"backends.{n}" for n in names if old.backends.get(n) != new.backends.get(n)]
    for section in ("models", "routing", "gateway", "fleet", "agents", "workspace"):
        if getattr(old, section) != getattr(new, section):
            out.append(section)
    return out
