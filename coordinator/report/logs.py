"""A run's output logs as data: the whole log, or its chunks as they are written (``logs [-f]``).

The CLI prints the chunks; the HTTP API will stream the same chunks as SSE.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from ..clock import poll
from ..config import FleetConfig
from ..errors import TaskError
from ..fleet.workspace import run_dirs
from ..queue.ops import require_task
from ..store import Record, open_store
from ..tasks import State
from ..tasks.cache import load_cached

FOLLOW_POLL_S = 0.1
LOG_NAMES = {"stdout": "stdout.log", "stderr": "stderr.log", "acceptance": "acceptance.log"}


def log_chunks(config: FleetConfig, task_id: str, *, follow: bool, stream: str = "stdout",
               run: int | None = None) -> Iterator[str]:
    """The log's text; with ``follow``, chunk after chunk while the task is pending or running.

    Bad requests (an unknown task or run, no log yet) raise ``TaskError`` here,
    before anything is read or waited for; the chunks come from the iterator.
    """
    record = open_store(config).read_record(task_id)
    if not run_dirs(config, task_id) and record is None:
        # Checked only when there is nothing to show, so a typo fails fast instead of following forever.
        require_task(load_cached(config), task_id)
    if run is not None:
        _require_run(config, task_id, run, record, follow=follow)
    if follow:
        return _follow(config, task_id, LOG_NAMES[stream], run)
    path = _pick(config, task_id, run)
    if path is None:
        raise TaskError(f"task {task_id!r} has no {stream} log yet; `coordinator logs -f {task_id}` waits "
                        "for it", task_id=task_id)
    log = path / LOG_NAMES[stream]
    if stream == "acceptance" and not log.exists():
        raise TaskError(f"run {path.name} of task {task_id!r} has no acceptance.log (the task has no acceptance "
                        "command, or the run did not reach it)", task_id=task_id)
    return iter([log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""])


def _require_run(config: FleetConfig, task_id: str, run: int, record: Record | None, *, follow: bool) -> None:
    """``--run N`` must name a run folder, or (following) the next run of a task that is still active."""
    if any(d.name == str(run) for d in run_dirs(config, task_id)):
        return
    active = record is None or record.state in (State.PENDING, State.RUNNING)
    upcoming = (record.epoch if record else 0) + (0 if record and record.state == State.RUNNING else 1)
    if follow and active and run <= upcoming:
        return
    shown = ", ".join(d.name for d in run_dirs(config, task_id)) or "none yet"
    raise TaskError(f"task {task_id!r} has no run {run} (runs: {shown}); pick one with --run N or drop --run",
                    task_id=task_id)


def is_waiting_for_fleet(config: FleetConfig, task_id: str) -> bool:
    """Whether ``logs -f`` would wait for a task that is not running while no agent is alive to run it."""
    from .status import agent_row  # noqa: PLC0415  (psutil: only when following)

    store = open_store(config)
    record = store.read_record(task_id)
    if record is not None and record.state != State.PENDING:
        return False
    now = time.time()
    return not any(agent_row(a, now, config.fleet.lease_s)["alive"] for a in store.read_agents())


def _pick(config: FleetConfig, task_id: str, run: int | None) -> Path | None:
    dirs = run_dirs(config, task_id)
    if run is not None:
        dirs = [d for d in dirs if d.name == str(run)]
    return dirs[-1] if dirs else None


def _follow(config: FleetConfig, task_id: str, name: str, run: int | None) -> Iterator[str]:
    store = open_store(config)
    current, offset = None, 0
    for _ in poll(FOLLOW_POLL_S):
        path = _pick(config, task_id, run)
        if path != current and path is not None:
            current, offset = path, 0
        if current is not None:
            chunk, offset = _read_from(current / name, offset)
            if chunk:
                yield chunk
        record = store.read_record(task_id)
        active = record is None or record.state in (State.PENDING, State.RUNNING)
        if not active and (run is not None or _pick(config, task_id, None) == current):
            if current is not None:
                chunk, offset = _read_from(current / name, offset)
                if chunk:
                    yield chunk
            return


def _read_from(path: Path, offset: int) -> tuple[str, int]:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return "", offset
    return data.decode("utf-8", errors="replace"), offset + len(data)
