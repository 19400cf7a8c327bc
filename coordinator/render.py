"""Rich rendering of task lists and task details (one place that renders)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from rich.console import Console

from .config import FleetConfig
from .errors import TaskError
from .report import TaskRow
from .store import FileStore, read_json

STATE_STYLES = {"pending": "white", "blocked": "yellow", "running": "cyan", "done": "green",
                "failed": "red", "invalid": "red", "cancelled": "dim"}


ANSI = {"white": "", "yellow": "\x1b[33m", "cyan": "\x1b[36m", "green": "\x1b[32m", "red": "\x1b[31m",
        "dim": "\x1b[2m"}


def task_table(rows: list[TaskRow], out: TextIO | None = None, *, color: bool | None = None) -> None:
    """Tasks as aligned columns, one line each, in priority order.

    Plain formatted lines rather than a rich Table: rich lays out every cell of
    every row, which takes seconds for 10,000 tasks; this takes milliseconds.
    """
    out = out or sys.stdout
    color = out.isatty() if color is None else color
    header = ("ID", "STATE", "PRI", "TRIES", "AGENT", "TITLE / REASON")
    cells = [(r.id, r.state, str(r.priority), f"{r.attempts}/{r.max_attempts}", r.agent or "-",
              r.title if not r.reason else f"{r.title} — {r.reason}") for r in rows]
    widths = [max([len(header[i])] + [len(c[i]) for c in cells]) for i in range(5)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[5]]
    for cell in cells:
        state = cell[1].ljust(widths[1])
        if color:
            state = f"{ANSI[STATE_STYLES.get(cell[1], 'white')]}{state}\x1b[0m"
        lines.append("  ".join([cell[0].ljust(widths[0]), state, *(c.ljust(w) for c, w in
                                                                    zip(cell[2:5], widths[2:5]))]) + "  " + cell[5])
    if not rows:
        lines.append("no tasks")
    out.write("\n".join(lines) + "\n")


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
    return {"task": {**task.model_dump(mode="json"), "source": task.source}, "state": row.state, "reason": row.reason,
            "record": asdict(record) if record else None, "claim": asdict(claim) if claim else None,
            "runs_dir": str(store.runs_dir / task_id), "run_usage": [read_json(p) for p in runs]}


def task_detail(data: dict[str, Any], console: Console | None = None) -> None:
    """A readable view of ``task_detail_json``."""
    console = console or Console()
    task, record = data["task"], data["record"] or {}
    style = STATE_STYLES.get(data["state"], "white")
    console.print(f"[bold]{task['id']}[/]  [{style}]{data['state']}[/]  priority {task['priority']}  "
                  f"attempts {record.get('attempts', 0)}/{task['max_attempts']}")
    # Everything below holds user text (file names, error output, agent ids): never parse it as markup.
    console.print(f"source: {task.get('source', '-')}", markup=False)
    if data["reason"]:
        console.print(f"reason: {data['reason']}", markup=False)
    if task.get("depends_on"):
        console.print(f"depends on: {', '.join(task['depends_on'])}", markup=False)
    if data["claim"]:
        claim = data["claim"]
        console.print(f"claimed by {claim['agent']} (pid {claim['pid']}), epoch {claim['epoch']}", markup=False)
    for entry in record.get("history", []):
        error = f" — {entry['error']}" if entry.get("error") else ""
        console.print(f"  attempt {entry['attempt']}: {entry['outcome']} by {entry['agent']}{error}", markup=False)
    if record.get("usage"):
        console.print(f"usage: {record['usage']}", markup=False)
    console.print(f"runs: {data['runs_dir']}", markup=False)
    console.print("prompt:", markup=False)
    console.print(task["prompt"], markup=False, highlight=False)
