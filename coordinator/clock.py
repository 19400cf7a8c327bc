"""Time: the one clock every policy takes, a manual clock for tests, and the one wait loop.

``Clock`` gives monotonic ``now()`` (for intervals and deadlines), ``wall()``
(for timestamps other processes compare, such as a lease's ``renewed_at``) and
an async ``sleep``. ``ManualClock`` is what tests inject: its time moves only when
the test says so, so a 60-second window runs in microseconds and no test depends
on the machine's speed.

``poll()`` is the only "wait until" loop in the code base (arq's ``poll``):

    for elapsed in poll(0.1, timeout_s=5, wake=event):
        if done():
            break

It yields the seconds elapsed, then waits ``step_s`` (or until ``wake`` is set)
before the next turn, and stops after ``timeout_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator


class Clock:
    """Real time: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``."""

    def now(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()

    def wall(self) -> float:
        """Seconds since the epoch (shared between processes)."""
        return time.time()

    def boot(self) -> float:
        """Seconds since boot, counting time stopped (SIGSTOP) and suspended (a sleeping laptop)."""
        return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of real time."""
        import asyncio  # noqa: PLC0415  (agents use this module's poll() and must not load asyncio)

        await asyncio.sleep(max(0.0, seconds))

    def wait(self, seconds: float, wake: threading.Event | None = None) -> None:
        """Block for ``seconds``, or until ``wake`` is set."""
        if wake is not None:
            wake.wait(max(0.0, seconds))
        else:
            time.sleep(max(0.0, seconds))


class ManualClock(Clock):
    """Virtual time: starts at ``start`` and moves only by ``advance`` or a sleep."""

    def __init__(self, start: float = 1000.0, *, wall_start: float = 1_700_000_000.0) -> None:
        self.t = start
        self.wall_offset = wall_start - start
        self.slept: list[float] = []

    def now(self) -> float:
        """The current virtual time."""
        return self.t

    def wall(self) -> float:
        """Virtual wall time, moving with ``now``."""
        return self.t + self.wall_offset

    def boot(self) -> float:
        """Virtual time since boot, moving with ``now``."""
        return self.t

    def advance(self, seconds: float) -> None:
        """Move virtual time forward."""
        self.t += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        """Record the wait, jump virtual time forward, and let other tasks run."""
        import asyncio  # noqa: PLC0415

        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)

    def wait(self, seconds: float, wake: threading.Event | None = None) -> None:
        """Record the wait and jump virtual time forward at once."""
        self.slept.append(seconds)
        self.advance(seconds)


REAL_CLOCK = Clock()


def poll(step_s: float, *, timeout_s: float | None = None, wake: threading.Event | None = None,
         clock: Clock = REAL_CLOCK, wait: Callable[[float], object] | None = None, growth: float = 1.0,
         max_step_s: float | None = None) -> Iterator[float]:
    """Yield seconds elapsed, waiting ``step_s`` between turns, until ``timeout_s`` has passed.

    The caller's ``break`` ends the wait; running out of time ends the loop
    (check the condition after it). ``wake`` cuts a wait short, and is cleared
    before the next turn so one set wakes one turn. ``wait`` replaces the pause
    with a blocking call that may return early (``Popen.wait`` with a timeout).
    ``growth`` multiplies the step after each turn, up to ``max_step_s`` (backoff).
    """
    start = clock.now()
    while True:
        before = clock.now()
        yield before - start
        if timeout_s is not None and clock.now() - start >= timeout_s:
            return
        pause = step_s - (clock.now() - before)
        if timeout_s is not None:
            pause = min(pause, timeout_s - (clock.now() - start))
        if wait is not None:
            wait(max(0.0, pause))
        else:
            clock.wait(max(0.0, pause), wake)
        if wake is not None:
            wake.clear()
        step_s = min(step_s * growth, max_step_s if max_step_s is not None else float("inf"))
