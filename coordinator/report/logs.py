"""A run's output logs as data: the whole log, or its chunks as they are written (``logs [-f]``).

The CLI prints the chunks; the HTTP API will stream the same chunks as SSE.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..clock import poll
from ..config import FleetConfig
from ..errors import TaskError
from ..fleet.workspace import run_dirs
from ..queue.ops import require_task
from ..store import open_store
from ..tasks import State
from ..tasks.cache import load_cached

FOLLOW_POLL_S = 0.1


def log_chunks(config: FleetConfig, task_id: str, *, follow: bool, stream: str = "stdout",
               run: int | None = None) -> Iterator[str]:
    """The log's text; with ``follow``, chunk after chunk while the task is pending or running."""
    if not run_dirs(config, task_id) and open_store(config).read_record(task_id) is None:
        # Checked only when there is nothing to show, so a typo fails fast instead of following forever.
        require_task(load_cached(config), task_id)
    if follow:
        yield from _follow(config, task_id, stream, run)
        return
    path = _pick(config, task_id, run)
    if path is None:
        raise TaskError(f"task {task_id!r} has no {stream} log yet; `coordinator logs -f {task_id}` waits "
                        "for it", task_id=task_id)
    log = path / f"{stream}.log"
    yield log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""


def _pick(config: FleetConfig, task_id: str, run: int | None) -> Path | None:
    dirs = run_dirs(config, task_id)
    if run is not None:
        dirs = [d for d in dirs if d.name == str(run)]
    return dirs[-1] if dirs else None


def _follow(config: FleetConfig, task_id: str, stream: str, run: int | None) -> Iterator[str]:
    store = open_store(config)
    current, offset = None, 0
    for _ in poll(FOLLOW_POLL_S):
        path = _pick(config, task_id, run)
        if path != current and path is not None:
            current, offset = path, 0
        if current is not None:
            chunk, offset = _read_from(current / f"{stream}.log", offset)
            if chunk:
                yield chunk
        record = store.read_record(task_id)
        active = record is None or record.state in (State.PENDING, State.RUNNING)
        if not active and (run is not None or _pick(config, task_id, None) == current):
            if current is not None:
                chunk, offset = _read_from(current / f"{stream}.log", offset)
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
