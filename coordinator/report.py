"""Task rows for ``tasks``, ``show`` and ``status``: built once, rendered elsewhere.

A task's displayed state is derived, never stored twice: the record's state
(no record = pending), except that a pending task whose dependency is unknown,
invalid, failed or cancelled shows as ``blocked`` with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .config import FleetConfig
from .queue import QueueView
from .store import Claim, FileStore, Record
from .tasks import TaskSet

STATES = ("pending", "blocked", "running", "done", "failed", "invalid", "cancelled")


@dataclass
class TaskRow:
    """One task as users see it."""

    id: str
    state: str
    priority: int
    title: str
    attempts: int
    max_attempts: int
    agent: str | None
    source: str
    reason: str | None = None  # why blocked, or the last error

    def to_json(self) -> dict[str, Any]:
        """Stable machine form for ``--json``."""
        return asdict(self)


@dataclass
class FleetSnapshot:
    """The queue at one moment: rows, invalid files, live claims."""

    rows: list[TaskRow]
    taskset: TaskSet
    records: dict[str, Record]
    claims: list[Claim]

    def counts(self) -> dict[str, int]:
        """Tasks per state, every state present; invalid counts bad files and tasks."""
        out = dict.fromkeys(STATES, 0)
        for row in self.rows:
            out[row.state] += 1
        out["invalid"] = len(self.taskset.invalid)
        return out


def snapshot(config: FleetConfig, store: FileStore | None = None) -> FleetSnapshot:
    """Read task files, records and claims once, and derive every row."""
    store = store or FileStore(config.state_dir)
    view = QueueView(config, store)
    records = {r.id: r for r in store.iter_records()}
    view.resync(records.values(), build_heap=False)
    rows = []
    for task in view.taskset.tasks.values():
        record = records.get(task.id)
        state = record.state if record else "pending"
        reason = record.last_error if record and state != "done" else None
        if state == "pending":
            blocked = view.blocked_reason(task.id)
            if blocked:
                state, reason = "blocked", blocked
        rows.append(TaskRow(id=task.id, state=state, priority=task.priority, title=task.title,
                            attempts=record.attempts if record else 0, max_attempts=task.max_attempts,
                            agent=record.agent if record else None, source=task.source, reason=reason))
    return FleetSnapshot(rows=rows, taskset=view.taskset, records=records, claims=store.list_claims())
