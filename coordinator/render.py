"""Rich rendering of task lists and task details (one place that renders)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from .config import FleetConfig
from .errors import TaskError
from .report import TaskRow
from .store import FileStore, read_json

STATE_STYLES = {"pending": "white", "blocked": "yellow", "running": "cyan", "done": "green",
                "failed": "red", "invalid": "red", "cancelled": "dim"}


def task_table(rows: list[TaskRow], console: Console | None = None) -> None:
    """A table of tasks, one row each, in priority order."""
    console = console or Console()
    table = Table(box=None, pad_edge=False)
    for name in ("ID", "STATE", "PRI", "TRIES", "AGENT", "TITLE / REASON"):
        table.add_column(name, no_wrap=name != "TITLE / REASON", overflow="fold")
    for row in rows:
        style = STATE_STYLES.get(row.state, "white")
        detail = row.title if not row.reason else f"{row.title} — {row.reason}"
        table.add_row(row.id, f"[{style}]{row.state}[/]", str(row.priority),
                      f"{row.attempts}/{row.max_attempts}", row.agent or "-", detail)
    console.print(table)
    if not rows:
        console.print("no tasks")


def task_detail_json(config: FleetConfig, task_id: str) -> dict[str, Any]:
    """The definition, derived state, record and live claim of one task."""
    from dataclasses import asdict  # noqa: PLC0415

    from .report import snapshot  # noqa: PLC0415

    store = FileStore(config.state_dir)
    snap = snapshot(config, store)
    task = snap.taskset.tasks.get(task_id)
    if task is None:
        raise TaskError(f"no task {task_id!r}; `coordinator tasks` lists them", task_id=task_id)
    row = next(r for r in snap.rows if r.id == task_id)
    record = snap.records.get(task_id)
    claim = store.read_claim(task_id)
    runs = sorted((store.runs_dir / task_id).glob("*/usage.json"))
    return {"task": task.model_dump(mode="json"), "state": row.state, "reason": row.reason,
            "record": asdict(record) if record else None, "claim": asdict(claim) if claim else None,
            "runs_dir": str(store.runs_dir / task_id), "run_usage": [read_json(p) for p in runs]}


def task_detail(data: dict[str, Any], console: Console | None = None) -> None:
    """A readable view of ``task_detail_json``."""
    console = console or Console()
    task, record = data["task"], data["record"] or {}
    style = STATE_STYLES.get(data["state"], "white")
    console.print(f"[bold]{task['id']}[/]  [{style}]{data['state']}[/]  priority {task['priority']}  "
                  f"attempts {record.get('attempts', 0)}/{task['max_attempts']}")
    console.print(f"source: {task.get('source', '-')}")
    if data["reason"]:
        console.print(f"reason: {data['reason']}")
    if task.get("depends_on"):
        console.print(f"depends on: {', '.join(task['depends_on'])}")
    if data["claim"]:
        claim = data["claim"]
        console.print(f"claimed by {claim['agent']} (pid {claim['pid']}), epoch {claim['epoch']}")
    for entry in record.get("history", []):
        error = f" — {entry['error']}" if entry.get("error") else ""
        console.print(f"  attempt {entry['attempt']}: {entry['outcome']} by {entry['agent']}{error}")
    if record.get("usage"):
        console.print(f"usage: {record['usage']}")
    console.print(f"runs: {data['runs_dir']}")
    console.print("prompt:")
    console.print(task["prompt"], markup=False, highlight=False)
