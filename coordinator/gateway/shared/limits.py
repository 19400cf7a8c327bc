"""Rate limits across gateways: a backend's token buckets in Redis, in front of each host's own limiter.

A call first gets a permit from this host's ``limits.Limiter`` (its concurrency cap,
its priority order, its own buckets), then takes from the shared buckets
(``lua/bucket.lua``: the same refill-and-debt rule as ``limits.TokenBucket``, on the
server's clock, atomically): granted, or told how long to wait before asking again.
So an ``rpm`` limit holds for the fleet however many gateways it runs, and no host
sends more than its own limiter allows either. The local limiter keeps priority
order among this host's callers; across hosts, whoever asks first after a refill
goes. Output tokens and the input estimate's correction are debited when the call
ends. Redis down: the local limiter alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ...clock import REAL_CLOCK, Clock
from ...config import BackendConfig
from ..limits import BURST_S, Limiter, Permit
from .link import RedisLink, SharedDown


class SharedLimiter:
    """A backend's limiter: the host's own ``Limiter`` plus the fleet-wide buckets (same interface)."""

    def __init__(self, local: Limiter, link: RedisLink, backend: str, config: BackendConfig,
                 clock: Clock = REAL_CLOCK) -> None:
        self.local = local
        self.link = link
        self.clock = clock
        self.keys = [link.key("bucket", backend, kind) for kind in ("rpm", "input_tpm", "output_tpm")]
        self._debits: set[asyncio.Task] = set()
        self._take_rates(config)

    def _take_rates(self, config: BackendConfig) -> None:
        self.rates = [str(config.rpm), str(config.input_tpm), str(config.output_tpm)]
        self.limited = any(rate > 0 for rate in (config.rpm, config.input_tpm, config.output_tpm))

    def retune(self, config: BackendConfig) -> None:
        """New limits from a reloaded fleet.toml, here and in the shared buckets (``Limiter.retune``)."""
        self.local.retune(config)
        self._take_rates(config)

    @property
    def observe_wait(self) -> Callable[[float], None] | None:
        """The local limiter's wait metric (set by ``reload.py``)."""
        return self.local.observe_wait

    @observe_wait.setter
    def observe_wait(self, observe: Callable[[float], None] | None) -> None:
        self.local.observe_wait = observe

    @property
    def active(self) -> int:
        """Calls holding a permit on this host."""
        return self.local.active

    @property
    def waiting(self) -> int:
        """Callers queued on this host."""
        return self.local.waiting

    async def acquire(self, priority: int, input_tokens: int) -> Permit:
        """This host's permit, then the shared buckets' grant."""
        permit = await self.local.acquire(priority, input_tokens)
        try:
            await self._take(input_tokens)
        except BaseException:
            self.local.release(permit)
            raise
        return permit

    def release(self, permit: Permit, *, input_tokens: int | None = None, output_tokens: int = 0) -> None:
        """Give the permit back here; debit the real usage in Redis (in the background)."""
        if not permit.released and self.limited and self.link.up:
            correction = 0 if input_tokens is None else input_tokens - permit.input_estimate
            if correction or output_tokens:
                task = asyncio.get_running_loop().create_task(self._call("debit", correction, output_tokens))
                self._debits.add(task)
                task.add_done_callback(self._debits.discard)
        self.local.release(permit, input_tokens=input_tokens, output_tokens=output_tokens)

    async def _take(self, input_tokens: int) -> None:
        if not self.limited:
            return
        while True:
            try:
                wait_ms = int(await self._call("take", input_tokens, 0))
            except SharedDown:
                return  # this host's limiter alone until Redis answers
            if wait_ms <= 0:
                return
            await self.clock.sleep(wait_ms / 1000)

    async def _call(self, mode: str, input_tokens: int, output_tokens: int) -> int:
        args = [mode, *self.rates, str(input_tokens), str(output_tokens), str(BURST_S)]
        try:
            return await self.link.run(lambda: self.link.script("bucket")(keys=self.keys, args=args))
        except SharedDown:
            if mode == "take":
                raise
            return 0
