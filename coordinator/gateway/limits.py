"""Per-backend rate limits: token buckets for rpm / input_tpm / output_tpm plus a concurrency cap.

Requests wait rather than fail, and waiters are served strictly in priority order
(lower ``x-coordinator-priority`` first, then arrival order), so when the backend is
saturated a critical task's call goes before a low one that came earlier.

Buckets refill continuously at ``limit / 60`` per second and hold one second's worth,
so the configured per-minute rate holds over any window (as the providers enforce
it: "60 rpm may be enforced as 1 request per second"). A bucket may go into debt:
a request larger than the bucket still goes once the bucket is full, and the debt
delays the next ones. Input tokens are estimated up front and corrected from the
response's usage; output tokens are unknown until the end, so they are debited
afterwards and throttle the calls that follow.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import BackendConfig
from ..clock import REAL_CLOCK, Clock

BURST_S = 1.0


class TokenBucket:
    """A continuously refilled bucket of ``per_minute`` units; 0 means unlimited."""

    def __init__(self, per_minute: float, clock: Clock, burst_s: float = BURST_S) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.clock = clock
        self.stamp = clock.now()
        self.burst_s = burst_s

    def retune(self, per_minute: float) -> None:
        """A new rate, keeping what is in the bucket (and any debt) up to the new capacity."""
        self._refill()
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * self.burst_s)
        self.level = min(self.level, self.capacity)

    @property
    def unlimited(self) -> bool:
        """No limit configured."""
        return self.rate <= 0

    def _refill(self) -> None:
        now = self.clock.now()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_s(self, cost: float) -> float:
        """Seconds until ``cost`` may be taken (a cost above capacity needs a full bucket)."""
        if self.unlimited:
            return 0.0
        self._refill()
        need = min(cost, self.capacity)
        # The tolerance absorbs float rounding, which could otherwise ask for waits too
        # small to move the clock at all.
        return 0.0 if self.level >= need - 1e-6 else (need - self.level) / self.rate

    def take(self, cost: float) -> None:
        """Debit ``cost`` (may go negative: the debt delays later takers)."""
        if not self.unlimited:
            self._refill()
            self.level -= cost


@dataclass
class Permit:
    """A granted slot: the caller holds it for the call and gives it back with the real usage."""

    input_estimate: int
    released: bool = False


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    input_tokens: int = field(compare=False)
    future: asyncio.Future = field(compare=False)


class Limiter:
    """Token buckets and a concurrency cap for one backend, granting in priority order."""

    def __init__(self, config: BackendConfig, clock: Clock = REAL_CLOCK) -> None:
        self.clock = clock
        self.rpm = TokenBucket(config.rpm, clock)
        self.input_tpm = TokenBucket(config.input_tpm, clock)
        self.output_tpm = TokenBucket(config.output_tpm, clock)
        self.max_concurrency = config.max_concurrency
        self.active = 0
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self._timer: asyncio.Task | None = None
        self.observe_wait: Callable[[float], None] | None = None  # told each wait's seconds (a metric)

    def retune(self, config: BackendConfig) -> None:
        """New limits from a reloaded fleet.toml: buckets keep their level, waiters keep their place."""
        self.rpm.retune(config.rpm)
        self.input_tpm.retune(config.input_tpm)
        self.output_tpm.retune(config.output_tpm)
        self.max_concurrency = config.max_concurrency
        if self._heap:
            self._dispatch()  # a raised limit may let waiters go now

    @property
    def waiting(self) -> int:
        """Callers queued for a slot."""
        return sum(1 for w in self._heap if not w.future.done())

    def _wait_s(self, input_tokens: int) -> float:
        return max(self.rpm.wait_s(1), self.input_tpm.wait_s(input_tokens), self.output_tpm.wait_s(1))

    def _grant(self, input_tokens: int) -> Permit:
        self.rpm.take(1)
        self.input_tpm.take(input_tokens)
        self.active += 1
        return Permit(input_estimate=input_tokens)

    async def acquire(self, priority: int, input_tokens: int) -> Permit:
        """Wait for a slot; returns at once when nothing is queued and there is room."""
        if not self._heap and self.active < self.max_concurrency and self._wait_s(input_tokens) == 0:
            return self._grant(input_tokens)
        waiter = _Waiter(priority, next(self._seq), input_tokens, asyncio.get_running_loop().create_future())
        heapq.heappush(self._heap, waiter)
        self._dispatch()
        started = self.clock.now()
        try:
            permit = await waiter.future
            if self.observe_wait is not None:
                self.observe_wait(self.clock.now() - started)
            return permit
        except asyncio.CancelledError:
            # Granted in the same tick we were cancelled: give the slot back.
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())
            raise

    def release(self, permit: Permit, *, input_tokens: int | None = None, output_tokens: int = 0) -> None:
        """Return the slot, correcting the input estimate and debiting the output."""
        if permit.released:
            return
        permit.released = True
        self.active -= 1
        if input_tokens is not None:
            self.input_tpm.take(input_tokens - permit.input_estimate)
        self.output_tpm.take(output_tokens)
        self._dispatch()

    def _dispatch(self) -> None:
        """Grant queued waiters in order while there is room; arm a timer for bucket refills."""
        while self._heap:
            head = self._heap[0]
            if head.future.done():  # cancelled while queued
                heapq.heappop(self._heap)
                continue
            if self.active >= self.max_concurrency:
                return  # a release will call us again
            wait = self._wait_s(head.input_tokens)
            if wait > 0:
                self._arm(wait)
                return
            heapq.heappop(self._heap)
            head.future.set_result(self._grant(head.input_tokens))

    def _arm(self, wait_s: float) -> None:
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._after(wait_s))

    async def _after(self, wait_s: float) -> None:
        await self.clock.sleep(wait_s)
        self._timer = None
        self._dispatch()
