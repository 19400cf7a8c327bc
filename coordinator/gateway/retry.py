"""The one retry loop of the gateway: capped exponential backoff, full jitter, retry-after.

Backends classify failures (``RetryableError`` for 408/409/429/5xx/529, connection
errors and timeouts, honouring ``x-should-retry``; ``FatalBackendError`` for the
rest); this loop decides when to try again. A ``retry-after`` the server gave wins
over the computed backoff as long as it is within ``max_s``; a longer one is not
slept through here but handed back to the client, whose own retry-after handling
is better placed to wait that long. ``CircuitOpenError`` is never retried: the
breaker already said when to come back.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ..config import BackendConfig
from ..errors import RetryableError
from ..clock import REAL_CLOCK, Clock

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long to wait between attempts; the defaults are `[backends.*]`'s (config.py)."""

    max_retries: int
    base_s: float
    max_s: float

    @classmethod
    def for_backend(cls, config: BackendConfig) -> RetryPolicy:
        """The policy a ``[backends.NAME]`` table asks for."""
        return cls(max_retries=config.max_retries, base_s=config.retry_base_s, max_s=config.retry_max_s)

    def delay_s(self, attempt: int, retry_after_s: float | None, rand: Callable[[], float]) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to stop retrying."""
        if attempt >= self.max_retries:
            return None
        if retry_after_s is not None and retry_after_s >= 0:
            return retry_after_s if retry_after_s <= self.max_s else None
        # Full jitter (AWS architecture blog): uniform in [0, capped exponential].
        return rand() * min(self.max_s, self.base_s * (2 ** attempt))


OnRetry = Callable[[int, RetryableError, float], None]


async def retry_call(attempt_fn: Callable[[int], Awaitable[T]], policy: RetryPolicy, *,
                     clock: Clock = REAL_CLOCK, rand: Callable[[], float] = random.random,
                     on_retry: OnRetry | None = None) -> T:
    """Run ``attempt_fn(attempt)`` until it returns, retrying ``RetryableError`` per ``policy``."""
    attempt = 0
    while True:
        try:
            return await attempt_fn(attempt)
        except RetryableError as exc:
            delay = policy.delay_s(attempt, exc.retry_after_s, rand)
            if delay is None:
                raise
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await clock.sleep(delay)
            attempt += 1
