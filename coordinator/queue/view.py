"""Each agent's in-memory view of the queue, so a claim costs O(log n).

The view is a heap of ready tasks (pending, every dependency done) ordered by
``Task.sort_key``. It is built once from the task files and the records, then
kept current from the append-only event feed: a claim reads only the events
written since the last one, instead of every record. The heap is only a hint:
the store's ``claim`` operation re-checks the record and the claim atomically, so
a stale view can cost a skipped entry, never a double claim. A full resync runs
before the agent concludes the queue is empty, and whenever the task files change.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from ..clock import REAL_CLOCK, Clock
from ..config import FleetConfig
from ..store import Record, Store
from ..tasks import State, Task, TaskSet
from ..tasks.cache import open_index, save_index
from .taskfiles import SharedTaskFiles

RESCAN_EVERY_S = 2.0
STORE_TIME_EVERY_S = 0.5
STATE_NAMES = frozenset(State)


@dataclass
class QueueCounts:
    """How many tasks are ready to claim, running, or waiting on dependencies."""

    ready: int
    running: int
    waiting: int
    backing_off: int = 0  # failed an attempt and waiting out its retry backoff


class QueueView:
    """Ready tasks in priority order, kept in step with the store's event feed."""

    def __init__(self, config: FleetConfig, store: Store, *, clock: Clock = REAL_CLOCK, loads: bool = True) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.index = open_index(config)
        # Every host's task files, on a shared store; ``loads``: into its ready set too (reports do not).
        self.files = SharedTaskFiles(store, self.index, loads=loads)
        self.taskset: TaskSet = TaskSet(tasks={}, invalid=[], blocked={}, dependents={})
        self.states: dict[str, State] = {}
        self.heap: list[tuple[tuple, str]] = []
        self.retry_at: dict[str, float] = {}  # tasks backing off after a failed attempt
        self.backoff: list[tuple[float, str]] = []  # the same, by when they may run
        self.cursor = 0
        self.paused = False  # the fleet is paused: kept from the feed's paused/resumed events, no round trip
        self._scanned_at = float("-inf")
        self._store_time, self._store_time_at = 0.0, float("-inf")

    def resync(self, records: Iterable[Record] | None = None, *, build_heap: bool = True) -> None:
        """Rebuild the whole view from task files and records (O(n)); pass records already read."""
        # Take the feed's end before reading records: a change made in between is
        # then both in the records and replayed from the feed, which is harmless.
        self.cursor = self.store.event_cursor()
        self.paused = self.store.is_paused()
        self.taskset = self.files.refresh()
        save_index(self.config, self.index)
        self._scanned_at = self.clock.now()
        records = self.store.iter_records() if records is None else records
        self.states = {}
        self.retry_at, self.backoff = {}, []
        for record in records:
            self.states[record.id] = record.state
            if record.retry_at is not None and record.state == State.PENDING:
                self._back_off(record.id, record.retry_at)
        self.heap = []
        if build_heap:  # only claimers need it; reports (status, tasks) read states alone
            self.heap = [(task.sort_key(), task.id) for task in self.taskset.tasks.values()
                         if self.is_ready(task.id)]
            heapq.heapify(self.heap)

    def rescan_if_due(self) -> None:
        """Pick up added, edited and removed task files every RESCAN_EVERY_S (call outside the lock)."""
        if self.clock.now() - self._scanned_at < RESCAN_EVERY_S:
            return
        self.rescan()

    def rescan(self) -> None:
        """Pick up added, edited and removed task files now."""
        before = set(self.taskset.tasks)
        self.taskset = self.files.refresh()
        self._scanned_at = self.clock.now()
        for task_id in self.taskset.tasks.keys() - before:
            self._push_if_ready(task_id)

    def catch_up(self) -> None:
        """Apply events written since the last call (under the lock: O(new events))."""
        events, self.cursor = self.store.read_events(self.cursor)
        for event in events:
            if event.get("event") in ("paused", "resumed"):
                self.paused = event["event"] == "paused"
            task_id, state = event.get("task"), event.get("state")
            if not task_id or state not in STATE_NAMES:
                continue  # a note (fenced, agent_started, ...) changes no task's state
            state = State(state)
            self.states[task_id] = state
            if event.get("retry_at"):
                self._back_off(task_id, float(event["retry_at"]))
            else:
                self.retry_at.pop(task_id, None)
            self._push_if_ready(task_id)
            if state == State.DONE:
                for child in self.taskset.dependents.get(task_id, ()):
                    self._push_if_ready(child)

    def pop_ready(self) -> Task | None:
        """The best ready task by local knowledge, removed from the heap."""
        if self.backoff:
            self._release_due()
        while self.heap:
            _, task_id = heapq.heappop(self.heap)
            if self.is_ready(task_id):
                return self.taskset.tasks[task_id]
        return None

    def peek_ready(self) -> Task | None:
        """The best ready task by local knowledge, left in the heap."""
        task = self.pop_ready()
        if task is not None:
            heapq.heappush(self.heap, (task.sort_key(), task.id))
        return task

    def is_ready(self, task_id: str) -> bool:
        """Pending, valid, every dependency done, and not backing off after a failed attempt."""
        return self._is_runnable(task_id) and not self._is_backing_off(task_id)

    def has_failed_work(self) -> bool:
        """Whether any task failed for good, is blocked, or any task file is invalid (exit code 1)."""
        if self.taskset.invalid:
            return True
        return any(self.states.get(task_id) == State.FAILED or
                   (self.states.get(task_id, State.PENDING) == State.PENDING and self.blocked_reason(task_id))
                   for task_id in self.taskset.tasks)

    def pending_in_order(self) -> list[str]:
        """Pending tasks that can run some day (not blocked), in the order they would be claimed."""
        return [task_id for task_id in self.taskset.tasks
                if self.states.get(task_id, State.PENDING) == State.PENDING and not self.blocked_reason(task_id)]

    def waiting(self) -> int:
        """Pending or blocked: what ``[fleet] max_pending`` counts."""
        return sum(self.states.get(task_id, State.PENDING) == State.PENDING for task_id in self.taskset.tasks)

    def blocked_reason(self, task_id: str) -> str | None:
        """Why a pending task can never run (unknown, invalid or failed dependency), if so."""
        if task_id in self.taskset.blocked:
            return self.taskset.blocked[task_id]
        return self._blocked_by_deps(task_id, set())

    def counts(self) -> QueueCounts:
        """Ready / running / waiting totals over the valid tasks (O(n), for idle checks)."""
        ready = running = waiting = backing_off = 0
        for task_id in self.taskset.tasks:
            state = self.states.get(task_id, State.PENDING)
            if state == State.RUNNING:
                running += 1
            elif state == State.PENDING and self.blocked_reason(task_id) is None:
                if not self._is_runnable(task_id):
                    waiting += 1
                elif self._is_backing_off(task_id):
                    backing_off += 1
                else:
                    ready += 1
        return QueueCounts(ready=ready, running=running, waiting=waiting, backing_off=backing_off)

    def _blocked_by_deps(self, task_id: str, seen: set[str]) -> str | None:
        task = self.taskset.tasks.get(task_id)
        if task is None or task_id in seen:
            return None
        seen.add(task_id)
        for dep in task.depends_on:
            if dep in self.taskset.blocked:
                return f"dependency {dep!r} is blocked"
            if dep not in self.taskset.tasks:
                return f"dependency {dep!r} is not a valid task"
            state = self.states.get(dep, State.PENDING)
            if state in (State.FAILED, State.CANCELLED):
                return f"dependency {dep!r} {state}"
            if self._blocked_by_deps(dep, seen):
                return f"dependency {dep!r} is blocked"
        return None

    def _push_if_ready(self, task_id: str) -> None:
        if self.is_ready(task_id):
            heapq.heappush(self.heap, (self.taskset.tasks[task_id].sort_key(), task_id))

    def _is_runnable(self, task_id: str) -> bool:
        task = self.taskset.tasks.get(task_id)
        if task is None or task_id in self.taskset.blocked:
            return False
        if self.states.get(task_id, State.PENDING) != State.PENDING:
            return False
        return all(self.states.get(dep) == State.DONE for dep in task.depends_on)

    def _is_backing_off(self, task_id: str) -> bool:
        until = self.retry_at.get(task_id)
        return until is not None and self._store_now() < until

    def _store_now(self) -> float:
        """The store's time (backoffs are in it), read at most every STORE_TIME_EVERY_S.

        A networked store answers ``now()`` with a round trip; ``counts()`` asks once
        per backing-off task, so the reading is reused for a moment.
        """
        mono = self.clock.now()
        if mono - self._store_time_at >= STORE_TIME_EVERY_S:
            self._store_time, self._store_time_at = self.store.now(), mono
        return self._store_time + (mono - self._store_time_at)

    def _back_off(self, task_id: str, until: float) -> None:
        self.retry_at[task_id] = until
        heapq.heappush(self.backoff, (until, task_id))

    def _release_due(self) -> None:
        """Tasks whose backoff is over join the ready heap."""
        now = self._store_now()
        while self.backoff and self.backoff[0][0] <= now:
            until, task_id = heapq.heappop(self.backoff)
            if self.retry_at.get(task_id) == until:
                del self.retry_at[task_id]
                self._push_if_ready(task_id)
