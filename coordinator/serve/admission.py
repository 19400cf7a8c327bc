"""Admission of new tasks (``POST /tasks``, the MCP ``enqueue``): validate, then the queue and budget limits, then write.

The order is the contract's: a bad task (``ConfigError``, 400) and a taken id
(``TaskError``, 409) are refused whatever the load; an identical resubmit is
accepted without counting against anything; only new tasks meet the limits:
``QueueFullError`` (429 ``queue_full``) when ``[fleet] max_pending`` tasks are
waiting (pending or blocked; 0 = no limit), ``BudgetError`` (429
``budget_exhausted``) when the fleet has spent ``[fleet] max_usd`` (the gateway's
ledger decides, as for inference). Checking and writing hold
``queue.ops.writing_lock``, so concurrent requests to one server cannot both
squeeze past ``max_pending``. Plain data and errors: each surface renders them.
A server keeps one ``QueueView`` for it, brought up to date by a folder scan and
the event feed since the last submission, instead of reading every record per
request (which made a POST cost O(records): docs/performance.md, "Control plane").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import FleetConfig
from ..errors import QueueFullError
from ..queue import ops
from ..queue.view import QueueView
from ..store import open_store
from ..tasks import State


@dataclass
class Outcome:
    """What a submission came to: each task's accepted row and whether this call created it."""

    accepted: list[dict[str, Any]] = field(default_factory=list)
    created: list[bool] = field(default_factory=list)


class Admission:
    """Admits tasks to one fleet's queue."""

    def __init__(self, config: FleetConfig, check_budget: Callable[[], None]) -> None:
        self.config = config
        self.check_budget = check_budget  # raises BudgetError when the fleet's budget is spent
        self.view: QueueView | None = None  # made on the first submission, kept current after

    def submit(self, tables: list[Any], batch: bool) -> Outcome:
        """Validate and write ``tables`` (ConfigError, TaskError, QueueFullError, BudgetError); runs on a thread."""
        with ops.writing_lock():
            view = self._current_view()
            prepared = ops.prepare_tables(self.config, tables, batch=batch, taskset=view.taskset)
            new = sum(item.is_new for item in prepared)
            if new:
                self._admit(view, new)
            created = ops.write_prepared(self.config, prepared, view.store)
            view.rescan()
            view.catch_up()
            pending = {task_id: n for n, task_id in enumerate(view.pending_in_order(), start=1)}
            accepted = [accepted_row(item.task_id, view.states.get(item.task_id, State.PENDING), pending)
                        for item in prepared]
        return Outcome(accepted=accepted, created=created)

    def _current_view(self) -> QueueView:
        """The queue as of now: built once, then moved along by a folder scan and the event feed."""
        if self.view is None:
            self.view = QueueView(self.config, open_store(self.config))
            self.view.resync(build_heap=False)
        else:
            self.view.rescan()
            self.view.catch_up()
        return self.view

    def _admit(self, view: QueueView, new: int) -> None:
        """Raise BudgetError or QueueFullError when ``new`` more tasks may not join the queue now."""
        self.check_budget()
        limit = self.config.fleet.max_pending
        if not limit:
            return
        waiting = view.waiting()
        if waiting + new > limit:
            raise QueueFullError(limit=limit, waiting=waiting)


def accepted_row(task_id: str, state: State, pending: dict[str, int]) -> dict[str, Any]:
    """``{"task_id", "state", "queue_position", "links"}``; ``pending`` numbers the claimable queue from 1."""
    base = f"/v1/coordinator/tasks/{task_id}"
    shown = "blocked" if state == State.PENDING and task_id not in pending else str(state)
    return {"task_id": task_id, "state": shown, "queue_position": pending.get(task_id),
            "links": {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel", "retry": f"{base}/retry"}}
