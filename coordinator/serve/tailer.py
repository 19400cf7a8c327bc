"""The one reader of the fleet's event feed per server, fanned out to every stream.

A hundred SSE clients must not mean a hundred pollers of ``events.jsonl``: the
``Tailer`` alone calls ``store.read_events``, every ``poll_s``, on the server's
loop; it keeps the batches it read in a bounded buffer and wakes the
subscribers each batch concerns (the fleet stream: any event; a task's stream:
that task's events, or its running log growing, for which it stats the latest
run's logs of the followed tasks that are running, and only those).

A position in the feed is ``(cursor, index)``: the ``index``-th event after the
store cursor ``cursor`` (-1: none of them yet). The feed is append-only, so a
position names the same event for ever, across server restarts too; that is
what makes an SSE ``id`` resume exactly. ``since`` serves a position from the
buffer when it starts at one of the batches the tailer read; any other (an id
from an earlier server, or older than the buffer) says so, and the stream reads
the store itself once to catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..store import Store

POLL_S = 0.1
KEEP_EVENTS = 50_000  # events kept for resuming streams from memory (older ones are read from the store)
LOG_NAMES = ("stdout.log", "stderr.log")


class Position(NamedTuple):
    """The place of one event in the feed: ``index``-th after store cursor ``cursor`` (-1: before them)."""

    cursor: int
    index: int


@dataclass
class _Batch:
    start: int
    end: int
    events: list[dict[str, Any]]


@dataclass(eq=False)
class Subscription:
    """One stream's interest: every event (``task_id`` None) or one task's; ``wake`` is set on news."""

    task_id: str | None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    running: bool = False  # set by the stream: the tailer watches this task's logs only while it runs


class Tailer:
    """Reads the feed once per tick for all streams; ``polls`` counts its reads."""

    def __init__(self, store: Store, runs_root: Callable[[str], Path], *, poll_s: float = POLL_S,
                 keep_events: int = KEEP_EVENTS) -> None:
        self.store = store
        self.runs_root = runs_root
        self.poll_s = poll_s
        self.keep_events = keep_events
        self.position = 0
        self.polls = 0
        self._batches: deque[_Batch] = deque()
        self._by_start: dict[int, _Batch] = {}
        self._kept = 0
        self._subs: set[Subscription] = set()
        self._log_sizes: dict[str, tuple[int, ...]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def subscribers(self) -> int:
        """How many streams are following."""
        return len(self._subs)

    def head(self) -> Position:
        """The feed's end as last read: a new stream starts here."""
        self._start()
        return Position(self.position, -1)

    def subscribe(self, task_id: str | None) -> Subscription:
        """Follow every event (None) or one task's events and logs; starts the tailer on first use."""
        self._start()
        sub = Subscription(task_id)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop waking ``sub`` (a client went away: nothing else is cancelled)."""
        self._subs.discard(sub)

    def since(self, position: Position) -> tuple[list[tuple[Position, dict[str, Any]]], Position] | None:
        """The events after ``position`` and the position after them, from memory; None if not held."""
        if position.cursor == self.position:
            return [], position
        batch = self._by_start.get(position.cursor)
        if batch is None:
            return None
        out: list[tuple[Position, dict[str, Any]]] = []
        skip = position.index + 1
        started = False
        for each in self._batches:
            started = started or each is batch
            if started:
                out.extend((Position(each.start, n), event) for n, event in enumerate(each.events) if n >= skip
                           or each is not batch)
        return out, Position(self.position, -1)

    async def stop(self) -> None:
        """Stop reading (the server is stopping)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _start(self) -> None:
        if self._task is None:
            self.position = self.store.event_cursor()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="coordinator-api-tailer")

    async def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except OSError:
                pass  # the state dir is briefly unreadable: the next tick reads on from the same place
            await asyncio.sleep(self.poll_s)

    def tick(self) -> None:
        """Read what the feed gained, keep it, and wake whoever it concerns."""
        self.polls += 1
        events, end = self.store.read_events(self.position)
        if end != self.position:
            self._keep(_Batch(self.position, end, events))
            self.position = end
        touched = {event.get("task") for event in events}
        touched |= self._grown_logs()
        for sub in self._subs:
            if (sub.task_id is None and events) or (sub.task_id is not None and sub.task_id in touched):
                sub.wake.set()

    def _keep(self, batch: _Batch) -> None:
        self._batches.append(batch)
        self._by_start[batch.start] = batch
        self._kept += len(batch.events)
        while self._kept > self.keep_events and len(self._batches) > 1:
            old = self._batches.popleft()
            del self._by_start[old.start]
            self._kept -= len(old.events)

    def _grown_logs(self) -> set[str]:
        """Followed running tasks whose latest run's logs changed size since the last tick."""
        watched = {sub.task_id for sub in self._subs if sub.running and sub.task_id is not None}
        grown = set()
        for task_id in watched:
            sizes = log_sizes(self.runs_root(task_id))
            if sizes != self._log_sizes.get(task_id):
                self._log_sizes[task_id] = sizes
                grown.add(task_id)
        for task_id in set(self._log_sizes) - watched:
            del self._log_sizes[task_id]
        return grown


def latest_run(runs: Path) -> int:
    """The newest run folder's number (the claim's epoch), 0 when there is none."""
    try:
        return max((int(name) for name in os.listdir(runs) if name.isdigit()), default=0)
    except OSError:
        return 0


def log_sizes(runs: Path) -> tuple[int, ...]:
    """(run, size of each log) of the newest run: what changes when a running task writes."""
    run = latest_run(runs)
    sizes = [run]
    for name in LOG_NAMES:
        try:
            sizes.append(os.stat(runs / str(run) / name).st_size)
        except OSError:
            sizes.append(-1)
    return tuple(sizes)
