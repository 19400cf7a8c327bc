"""The gateway's line to the fleet's Redis: one asyncio client, its key names, and whether it answers.

Every shared operation goes through ``RedisLink.run``. While Redis answers, the link
is *up*; the first call that fails (connection refused or lost, a timeout, a refusal
such as OOM) marks it *down* and raises ``SharedDown``, and the caller does the local
thing instead (local dedup, cache, limits, budgets). While down, no call is even
tried — a request never waits on a dead server — and a watcher pings every
``PROBE_S``; when Redis answers again (and still has the settings the store needs),
the link is up again. The watcher also pings while up, so ``stats`` tells the truth
on an idle gateway.

Keys are the fleet's (``store.redis.Keys``: ``coordinator:{fleet:<name>}:``) plus
``gw:``, so they share the store's hash tag. Values are bytes (no decoding): stream
chunks go to clients byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...clock import REAL_CLOCK, Clock
from ...errors import ConfigError
from ...store.redis import Keys
from ...store.redis_setup import check_settings, redacted

log = logging.getLogger("coordinator.gateway")

T = TypeVar("T")
PROBE_S = 0.5
SOCKET_TIMEOUT_S = 5.0  # above the longest XREAD BLOCK (flights.BLOCK_MS), so a blocked read is no timeout
CONNECT_TIMEOUT_S = 1.0
_FAILURES = (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError)


class SharedDown(Exception):
    """Redis did not answer (or is known not to): do the local thing instead."""


class RedisLink:
    """An asyncio Redis client for one gateway, with its up/down state and the gateway's Lua scripts."""

    def __init__(self, url: str, *, fleet: str, password: str | None = None, clock: Clock = REAL_CLOCK) -> None:
        self.url = redacted(url)
        self.prefix = Keys(fleet).prefix + "gw:"
        self.clock = clock
        self.up = False
        self.since = clock.wall()
        self.client = aredis.Redis.from_url(url, password=password, socket_timeout=SOCKET_TIMEOUT_S,
                                            socket_connect_timeout=CONNECT_TIMEOUT_S, retry=Retry(NoBackoff(), 1))
        self._sync_args = {"url": url, "password": password}
        self._scripts: dict[str, Any] = {}
        self._watcher: asyncio.Task | None = None
        self._answered = False  # it has been up once (the first time is no recovery)
        self.ticks: list[Callable[[], Awaitable[None]]] = []  # run after every probe that found Redis up

    def key(self, *parts: str) -> str:
        """A gateway key of this fleet: ``coordinator:{fleet:<name>}:gw:<parts joined by :>``."""
        return self.prefix + ":".join(parts)

    def script(self, name: str) -> Any:
        """The registered Lua script ``shared/lua/<name>.lua`` (redis-py loads it on first use)."""
        found = self._scripts.get(name)
        if found is None:
            source = (resources.files(__package__) / "lua" / f"{name}.lua").read_text("utf-8")
            found = self._scripts[name] = self.client.register_script(source)
        return found

    async def start(self) -> None:
        """Connect and check the server's settings (``ConfigError`` if it may lose writes); down is fine."""
        await self._probe(first=True)
        if not self.up:
            log.warning("gateway: shared state at %s unreachable at start; serving with this host's own dedup, "
                        "cache, limits and budgets until it answers", self.url)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """Stop watching and close the connections."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        await self.client.aclose()

    async def run(self, op: Callable[[], Awaitable[T]]) -> T:
        """``op()``'s result; ``SharedDown`` (and the link marked down) when Redis fails it or is down."""
        if not self.up:
            raise SharedDown(self.url)
        try:
            return await op()
        except _FAILURES as exc:
            self._mark(False, exc)
            raise SharedDown(self.url) from exc

    def stats(self) -> dict[str, Any]:
        """What ``status`` shows: where, whether shared, since when."""
        return {"state": self.url, "up": self.up, "degraded": not self.up, "since": round(self.since, 3)}

    async def _watch(self) -> None:
        while True:
            await self.clock.sleep(PROBE_S)
            await self._probe(first=False)
            for tick in self.ticks if self.up else ():
                try:
                    await tick()
                except SharedDown:
                    break  # marked down by run(); the next probe tells when it is back

    async def _probe(self, *, first: bool) -> None:
        try:
            await self.client.ping()
            if not self.up:
                await asyncio.to_thread(self._check_settings)
        except ConfigError as exc:
            if first:
                raise
            self._mark(False, exc)
        except _FAILURES as exc:
            self._mark(False, exc)
        else:
            self._mark(True)

    def _check_settings(self) -> None:
        """The store's own start-up checks (appendonly, noeviction), on a short-lived sync client."""
        client = redis.Redis.from_url(self._sync_args["url"], password=self._sync_args["password"],
                                      socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S)
        try:
            check_settings(client, self.url)
        finally:
            client.close()

    def _mark(self, up: bool, exc: BaseException | None = None) -> None:
        if up == self.up:
            return
        first, self._answered = not self._answered, True
        self.up, self.since = up, self.clock.wall()
        if up and first:
            log.info("gateway: sharing dedup, cache, limits and budgets with other hosts through %s", self.url)
        elif up:
            log.warning("gateway: shared state at %s answers again; dedup, cache, limits and budgets are shared",
                        self.url)
        else:
            log.warning("gateway: shared state at %s unreachable (%s); serving with this host's own dedup, cache, "
                        "limits and budgets until it answers", self.url, exc or "no answer")
