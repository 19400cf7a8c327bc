"""Admission of new tasks (``POST /tasks``): validate, then the queue and budget limits, then write.

The order is the contract's: a bad task is 400 and a taken id 409 whatever the
load; an identical resubmit is 200 without counting against anything; only new
tasks meet the limits: 429 ``queue_full`` when ``[fleet] max_pending`` tasks are
waiting (pending or blocked; 0 = no limit), 429 ``budget_exhausted`` when the fleet
has spent ``[fleet] max_usd`` (the gateway's ledger decides, as for inference).
Checking and writing hold ``queue.ops.writing_lock``, so concurrent requests to
one server cannot both squeeze past ``max_pending``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..config import FleetConfig
from ..queue import ops
from ..report.rows import FleetSnapshot, snapshot
from .access import error

QUEUE_FULL_RETRY_S = 5


@dataclass
class Outcome:
    """What a submission came to: each task's accepted row and whether it was created, or a refusal."""

    accepted: list[dict[str, Any]] = field(default_factory=list)
    created: list[bool] = field(default_factory=list)
    refusal: web.Response | None = None


class Admission:
    """Admits tasks to one fleet's queue."""

    def __init__(self, config: FleetConfig, check_budget: Callable[[], None]) -> None:
        self.config = config
        self.check_budget = check_budget  # raises BudgetError when the fleet's budget is spent

    def submit(self, tables: list[Any], batch: bool) -> Outcome:
        """Validate and write ``tables`` (ConfigError 400, TaskError 409, BudgetError 429); runs on a thread."""
        with ops.writing_lock():
            prepared = ops.prepare_tables(self.config, tables, batch=batch)
            new = sum(item.is_new for item in prepared)
            if new:
                refusal = self._refusal(new)
                if refusal is not None:
                    return Outcome(refusal=refusal)
            created = ops.write_prepared(self.config, prepared)
        snap = snapshot(self.config)
        return Outcome(accepted=[accepted_row(snap, item.task_id) for item in prepared], created=created)

    def _refusal(self, new: int) -> web.Response | None:
        self.check_budget()
        limit = self.config.fleet.max_pending
        if not limit:
            return None
        counts = snapshot(self.config).counts()
        waiting = counts["pending"] + counts["blocked"]
        if waiting + new <= limit:
            return None
        return error(429, "queue_full", f"{waiting} tasks are waiting and [fleet] max_pending is {limit}; retry "
                                        "later, or raise max_pending in fleet.toml",
                     headers={"retry-after": str(QUEUE_FULL_RETRY_S)},
                     policy={"max_pending": limit, "waiting": waiting})


def accepted_row(snap: FleetSnapshot, task_id: str) -> dict[str, Any]:
    """``{"task_id", "state", "queue_position", "links"}`` of a task in ``snap``."""
    pending = [row.id for row in snap.rows if row.state == "pending"]
    row = next((r for r in snap.rows if r.id == task_id), None)
    base = f"/v1/coordinator/tasks/{task_id}"
    return {"task_id": task_id, "state": row.state if row else "pending",
            "queue_position": pending.index(task_id) + 1 if task_id in pending else None,
            "links": {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel", "retry": f"{base}/retry"}}
