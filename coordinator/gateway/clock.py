"""The time source every gateway policy takes, so tests drive time instead of sleeping.

``Clock`` is monotonic ``now()`` plus ``sleep()``; ``ManualClock`` is the one tests
inject: its ``sleep`` advances virtual time at once (and yields to the loop), so a
60-second rate-limit window runs in milliseconds and nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Real time: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of real time."""
        await asyncio.sleep(max(0.0, seconds))


class ManualClock(Clock):
    """Virtual time: starts at ``start`` and moves only by ``advance`` or ``sleep``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> float:
        """The current virtual time."""
        return self.t

    def advance(self, seconds: float) -> None:
        """Move virtual time forward."""
        self.t += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        """Record the wait, jump virtual time forward, and let other tasks run."""
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


REAL_CLOCK = Clock()
