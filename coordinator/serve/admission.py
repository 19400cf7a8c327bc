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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import FleetConfig
from ..errors import QueueFullError
from ..queue import ops
from ..report.rows import FleetSnapshot, snapshot


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

    def submit(self, tables: list[Any], batch: bool) -> Outcome:
        """Validate and write ``tables`` (ConfigError, TaskError, QueueFullError, BudgetError); runs on a thread."""
        with ops.writing_lock():
            prepared = ops.prepare_tables(self.config, tables, batch=batch)
            new = sum(item.is_new for item in prepared)
            if new:
                self._admit(new)
            created = ops.write_prepared(self.config, prepared)
        snap = snapshot(self.config)
        return Outcome(accepted=[accepted_row(snap, item.task_id) for item in prepared], created=created)

    def _admit(self, new: int) -> None:
        """Raise BudgetError or QueueFullError when ``new`` more tasks may not join the queue now."""
        self.check_budget()
        limit = self.config.fleet.max_pending
        if not limit:
            return
        counts = snapshot(self.config).counts()
        waiting = counts["pending"] + counts["blocked"]
        if waiting + new > limit:
            raise QueueFullError(limit=limit, waiting=waiting)


def accepted_row(snap: FleetSnapshot, task_id: str) -> dict[str, Any]:
    """``{"task_id", "state", "queue_position", "links"}`` of a task in ``snap``."""
    pending = [row.id for row in snap.rows if row.state == "pending"]
    row = next((r for r in snap.rows if r.id == task_id), None)
    base = f"/v1/coordinator/tasks/{task_id}"
    return {"task_id": task_id, "state": row.state if row else "pending",
            "queue_position": pending.index(task_id) + 1 if task_id in pending else None,
            "links": {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel", "retry": f"{base}/retry"}}
