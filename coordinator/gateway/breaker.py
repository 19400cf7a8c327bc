"""A per-backend circuit breaker: closed → open after N consecutive failures → half-open.

While open, calls fail fast with ``CircuitOpenError`` carrying how long to wait, so a
sustained outage costs the fleet no upstream calls and no client timeouts. After
``open_s`` exactly one probe is let through; its success closes the circuit, its
failure opens it for another ``open_s``. A probe that ends with no verdict (its
caller was cancelled) frees the probe slot for the next caller.
"""

from __future__ import annotations

from ..errors import CircuitOpenError
from ..clock import REAL_CLOCK, Clock

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with one half-open probe at a time."""

    def __init__(self, name: str, *, failures: int, open_s: float, clock: Clock = REAL_CLOCK) -> None:
        self.name = name
        self.threshold = failures
        self.open_s = open_s
        self.clock = clock
        self.failures = 0
        self.opened_until = 0.0
        self._open = False
        self._probing = False

    def retune(self, *, failures: int, open_s: float) -> None:
        """New thresholds from a reloaded fleet.toml; the circuit's state and count stay."""
        self.threshold = failures
        self.open_s = open_s

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (open but past ``open_s``)."""
        if not self._open:
            return CLOSED
        return HALF_OPEN if self.clock.now() >= self.opened_until else OPEN

    def before_call(self) -> bool:
        """Admit a call or raise ``CircuitOpenError``; True when this call is the probe."""
        if not self._open:
            return False
        now = self.clock.now()
        if now < self.opened_until:
            self._reject(self.opened_until - now)
        if self._probing:
            self._reject(self.open_s)
        self._probing = True
        return True

    def _reject(self, wait_s: float) -> None:
        raise CircuitOpenError(f"backend {self.name!r} is failing; its circuit is open, retry in {wait_s:.1f}s",
                               backend=self.name, until=self.clock.now() + wait_s,
                               retry_after_s=max(wait_s, 0.001))

    def record_success(self) -> None:
        """The upstream answered: close the circuit and forget past failures."""
        self.failures = 0
        self._open = False
        self._probing = False

    def record_failure(self) -> None:
        """An outage-like failure (5xx, 529, timeout, connection error)."""
        self.failures += 1
        if self._probing or self.failures >= self.threshold:
            self._open = True
            self.opened_until = self.clock.now() + self.open_s
        self._probing = False

    def record_abandoned(self) -> None:
        """The call ended with no verdict (cancelled): let another caller probe."""
        self._probing = False
