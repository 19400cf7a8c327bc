"""What happened since a view started, as data: the fleet's event feed, and this run's figures.

``RecentEvents`` follows the feed (the live view shows the recent events; the
plain view prints each finished task and each agent crash or restart once);
``since`` turns the status report's lifetime counters into this run's, against a
baseline taken when the run started. The HTTP API's event stream will send the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..store import Record, Store
from ..tasks import TaskSet

# Event kinds worth showing a person (state changes and process restarts); the rest are audit detail.
SHOWN_EVENTS = frozenset({"claimed", "done", "failed", "retrying", "reclaimed", "released", "fenced", "cancelled",
                          "retried", "agent_exited", "agent_spawned", "agent_hung",
                          "landed", "conflict", "gate_failed", "land_fenced", "salvaged",
                          "config_reloaded", "config_refused"})
# An attempt ended: the task is done, failed for good, waiting for another attempt, or cancelled.
OUTCOME_EVENTS = frozenset({"done", "failed", "retrying", "cancelled", "landed", "conflict", "gate_failed"})
AGENT_EVENTS = frozenset({"agent_exited", "agent_spawned", "agent_hung"})
# Counters that only grow, so this run's share is now minus the baseline.
RUN_TASK_STATES = ("done", "failed", "cancelled")


class RecentEvents:
    """Follows a store's feed from where it is now, keeping the last ``keep`` events of shown kinds."""

    def __init__(self, store: Store, keep: int = 50) -> None:
        self.store = store
        self.keep = keep
        self.cursor = store.event_cursor()
        self.events: list[dict[str, Any]] = []
        self.fresh: list[dict[str, Any]] = []  # the shown events the last refresh() read

    def refresh(self) -> list[dict[str, Any]]:
        """Read what is new; the recent shown events, oldest first."""
        new, self.cursor = self.store.read_events(self.cursor)
        self.fresh = [event for event in new if event.get("event") in SHOWN_EVENTS]
        self.events = (self.events + self.fresh)[-self.keep:]
        return self.events


@dataclass
class TaskOutcome:
    """One attempt's end as the plain run view prints it (``t1 done (attempt 1/3, $0.0012)``)."""

    task: str
    state: str  # done, failed, retrying, cancelled; conflict, gate_failed (re-queued: docs/workspaces.md)
    attempt: int
    max_attempts: int | None
    usd: float
    error: str | None = None


def task_outcomes(events: list[dict[str, Any]], taskset: TaskSet, records: dict[str, Record]) -> list[TaskOutcome]:
    """The attempt ends among ``events``, with the task's attempts so far and its cost (from its record)."""
    out = []
    for event in events:
        if event.get("event") not in OUTCOME_EVENTS or not event.get("task"):
            continue
        task_id = event["task"]
        record, task = records.get(task_id), taskset.tasks.get(task_id)
        attempt = event.get("attempt") or (record.attempts if record else 0)
        usd = float((record.usage or {}).get("usd", 0.0) or 0.0) if record else 0.0
        state = outcome_state(event)
        out.append(TaskOutcome(task=task_id, state=state, attempt=int(attempt),
                               max_attempts=task.max_attempts if task else None, usd=usd,
                               error=event.get("error") or event.get("reason") if state != "done" else None))
    return out


def outcome_state(event: dict[str, Any]) -> str:
    """What an attempt-ending event means for its task: a landing is done; a conflict past the limit failed."""
    kind = event["event"]
    if kind == "landed":
        return "done"
    if kind in ("conflict", "gate_failed") and event.get("state") == "failed":
        return "failed"
    return kind


def agent_notices(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Agent crashes, hangs and restarts among ``events`` (a first start is not news)."""
    return [e for e in events if e.get("event") in AGENT_EVENTS
            and (e["event"] != "agent_spawned" or e.get("restarts", 0) > 0)]


def since(baseline: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """``status`` with this run's figures: gateway counters and finished-task counts minus ``baseline``'s.

    Counts of states a task can leave (pending, running, blocked, invalid) are
    the current ones; nothing is ever negative (a task retried by hand during
    the run lowers a count the baseline had).
    """
    gateway = dict(status["gateway"])
    for key, value in baseline["gateway"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in gateway:
            delta = gateway[key] - value
            gateway[key] = round(max(delta, 0), 6) if isinstance(delta, float) else max(delta, 0)
    tasks = dict(status["tasks"])
    for state in RUN_TASK_STATES:
        tasks[state] = max(tasks.get(state, 0) - baseline["tasks"].get(state, 0), 0)
    return {**status, "tasks": tasks, "gateway": gateway}
