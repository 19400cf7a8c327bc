"""Where a claim does its work: its run folder, ``runs/<id>/<epoch>/`` under the state dir.

One folder per claim, named by its epoch: attempt numbers repeat after a
``retry`` or a release, epochs never do, so no run ever writes into another
run's folder (docs/architecture.md, "State on disk").
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..atomic import PRIVATE_DIR
from ..config import FleetConfig
from ..store import Record, Store
from ..tasks import State, Task

# How much of a failed attempt's logs the next attempt is shown.
FEEDBACK_TAIL_BYTES = 4 * 1024


def runs_root(config: FleetConfig, task_id: str) -> Path:
    """The folder holding every run folder of ``task_id``."""
    return config.state_dir / "runs" / task_id


def run_dir(config: FleetConfig, task_id: str, epoch: int) -> Path:
    """The run folder of one claim (created on demand)."""
    path = runs_root(config, task_id) / str(epoch)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    return path


def run_dirs(config: FleetConfig, task_id: str) -> list[Path]:
    """Run folders of a task, oldest first."""
    base = runs_root(config, task_id)
    if not base.is_dir():
        return []
    return sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def write_prompt(task: Task, run: Path) -> Path:
    """``<run>/prompt.md``: the prompt this run used, kept even if the task file is edited later."""
    path = run / "prompt.md"
    path.write_text(task.rendered_prompt(), encoding="utf-8")
    return path


def dependency_outputs(config: FleetConfig, store: Store, task: Task, run: Path) -> dict[str, Path]:
    """Copy each done dependency's ``output.md`` into ``<run>/deps/<id>.md``; {id: copy}.

    Copies, so a dependency retried while this task runs cannot change what it
    reads, and a command agent gets one folder (``{deps_dir}``) holding them all.
    """
    if not task.use_dependency_outputs or not task.depends_on:
        return {}
    folder = run / "deps"
    folder.mkdir(exist_ok=True)
    copies = {}
    for dep in dict.fromkeys(task.depends_on):
        record = store.read_record(dep)
        source = runs_root(config, dep) / str(record.epoch) / "output.md" if record else None
        if record is None or record.state != State.DONE or source is None or not source.is_file():
            continue
        copies[dep] = folder / f"{dep}.md"
        shutil.copyfile(source, copies[dep])
    return copies


def write_feedback(config: FleetConfig, record: Record | None, run: Path) -> Path | None:
    """For a retried attempt, ``<run>/feedback.md``: why the previous attempt failed, and its log's tail."""
    if record is None or not record.history or not record.last_error:
        return None
    last = record.history[-1]
    previous = runs_root(config, record.id) / str(last.get("epoch", ""))
    lines = [f"Attempt {last.get('attempt')} failed: {record.last_error}"]
    for name in ("acceptance.log", "stderr.log"):
        tail = read_tail(previous / name, FEEDBACK_TAIL_BYTES)
        if tail.strip():
            lines += ["", f"The end of {name}:", "```", tail.rstrip(), "```"]
    path = run / "feedback.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_tail(path: Path, limit: int) -> str:
    """The last ``limit`` bytes of a text file ('' if it is missing), decoded leniently."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
