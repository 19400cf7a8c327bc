"""Task rows for ``tasks``, ``show`` and ``status``: built once, rendered elsewhere.

A task's displayed state is derived, never stored twice: the record's state
(no record = pending), except that a pending task whose dependency is unknown,
invalid, failed or cancelled shows as ``blocked`` with the reason. Each invalid
file or task is a row too (state ``invalid``, the error as its reason), so
``tasks --state invalid`` lists exactly what ``status`` counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..atomic import read_json
from ..config import FleetConfig
from ..errors import TaskError
from ..fleet.workspace import run_dirs, runs_root
from ..gateway.client import stats_path
from ..queue.view import QueueView
from ..store import Claim, Record, Store, open_store
from ..tasks import InvalidFile, State, TaskSet

STATES = tuple(str(state) for state in State)  # every state, in the order reports show them


@dataclass
class TaskRow:
    """One task as users see it."""

    id: str
    state: str
    priority: int | None  # None: an invalid file has none
    title: str
    attempts: int
    max_attempts: int
    agent: str | None  # the [agents.NAME] it runs on
    source: str
    reason: str | None = None  # why blocked or invalid, or the last error
    worker: str | None = None  # the agent process that ran it last (the record's agent id)

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


def snapshot(config: FleetConfig, store: Store | None = None) -> FleetSnapshot:
    """Read task files, records and claims once, and derive every row."""
    store = store or open_store(config)
    view = QueueView(config, store, loads=False)  # a report: reads, loads nothing into a ready set
    records = {r.id: r for r in store.iter_records()}
    view.resync(records.values(), build_heap=False)
    rows = []
    for task in view.taskset.tasks.values():
        record = records.get(task.id)
        state = record.state if record else State.PENDING
        reason = record.last_error if record and state != State.DONE else None
        if state == State.PENDING:
            blocked = view.blocked_reason(task.id)
            if blocked:
                state, reason = State.BLOCKED, blocked
        rows.append(TaskRow(id=task.id, state=str(state), priority=task.priority, title=task.title,
                            attempts=record.attempts if record else 0, max_attempts=task.max_attempts,
                            agent=task.agent or config.fleet.default_agent, source=task.source, reason=reason,
                            worker=record.agent if record else None))
    rows.extend(invalid_row(bad) for bad in view.taskset.invalid)
    return FleetSnapshot(rows=rows, taskset=view.taskset, records=records, claims=store.list_claims())


def task_page(snap: FleetSnapshot, state: str | None, start: int, limit: int) -> dict[str, Any]:
    """``limit`` rows from the ``start``-th (of those in ``state``, if given), and the cursor of the next page.

    The page of the HTTP API's ``GET /tasks`` and the MCP ``list_tasks``: the cursor is
    the next row's position, as a string, and None on the last page.
    """
    rows = [row for row in snap.rows if state is None or row.state == state]
    end = start + limit
    return {"tasks": rows[start:end], "next_cursor": str(end) if end < len(rows) else None}


def invalid_row(bad: InvalidFile) -> TaskRow:
    """An invalid file or task as a row: its id when it has a well-formed one, else its path."""
    return TaskRow(id=bad.task_id or bad.path, state=str(State.INVALID), priority=None, title="", attempts=0,
                   max_attempts=0, agent=None, source=bad.path, reason=bad.error)


def task_detail(config: FleetConfig, task_id: str) -> dict[str, Any]:
    """One task: its definition, derived state, record, live claim and per-run usage (``show --json``)."""
    store = open_store(config)
    snap = snapshot(config, store)
    task = snap.taskset.tasks.get(task_id)
    if task is None:
        bad = next((b for b in snap.taskset.invalid if b.task_id == task_id), None)
        if bad is None:
            raise TaskError(f"no task {task_id!r}; `coordinator tasks` lists them", task_id=task_id)
        return invalid_detail(bad)
    row = next(r for r in snap.rows if r.id == task_id)
    record = snap.records.get(task_id)
    claim = store.read_claim(task_id)
    runs = runs_root(config, task_id)
    return {"task": {**task.model_dump(mode="json"), "source": task.source}, "state": row.state,
            "reason": row.reason, "record": record.to_json() if record else None,
            "claim": claim.to_json() if claim else None, "runs_dir": str(runs),
            "run_usage": [read_json(p) for p in sorted(runs.glob("*/usage.json"))],
            "last_run_prompt": last_run_prompt(config, task_id, task.rendered_prompt()),
            "routing": task_routing(config, task_id, record)}


def task_routing(config: FleetConfig, task_id: str, record: Record | None) -> dict[str, Any] | None:
    """The task's usage per alias it was routed to (gateway/routing.py): as the gateway saved it last, else as
    its record kept it when its last run ended; None when it made no request through the gateway."""
    saved = read_json(stats_path(config))
    rows = ((saved.get("task_aliases") or {}).get(task_id) if isinstance(saved, dict) else None) \
        or ((record.usage or {}).get("aliases") if record is not None else None)
    return rows if isinstance(rows, dict) and rows else None


def last_run_prompt(config: FleetConfig, task_id: str, current: str) -> dict[str, Any] | None:
    """The prompt the latest run used, when the task file has changed it since (None if the same).

    Each run keeps its prompt (``runs/<id>/<epoch>/prompt.md``), so ``show`` never
    reports an edited prompt as the one that ran.
    """
    runs = [d for d in run_dirs(config, task_id) if (d / "prompt.md").is_file()]
    if not runs:
        return None
    used = (runs[-1] / "prompt.md").read_text(encoding="utf-8", errors="replace")
    return None if used == current else {"run": int(runs[-1].name), "prompt": used}


def invalid_detail(bad: InvalidFile) -> dict[str, Any]:
    """``show`` of an invalid task: where it is and every problem, in the same shape as a valid one."""
    problems = [p.error for p in bad.problems()]
    return {"task": {"id": bad.task_id, "source": bad.path}, "state": str(State.INVALID), "reason": bad.error,
            "problems": problems, "record": None, "claim": None, "runs_dir": None, "run_usage": []}


def needs_attention(rows: list[TaskRow]) -> dict[str, list[dict[str, str | None]]]:
    """The failed, blocked and invalid tasks by name, with why (what the end-of-run summary lists)."""
    out: dict[str, list[dict[str, str | None]]] = {"failed": [], "blocked": [], "invalid": []}
    for row in rows:
        if row.state in out:
            out[row.state].append({"id": row.id, "reason": row.reason})
    return out
