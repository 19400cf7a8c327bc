"""``coordinator logs ID [-f]``: print (and follow) one run's output log (``runs/<id>/<epoch>/``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .config import FleetConfig
from .errors import TaskError
from .store import FileStore
from .taskcache import load_cached

FOLLOW_POLL_S = 0.1


def run_dirs(store: FileStore, task_id: str) -> list[Path]:
    """Run folders of a task (one per claim, named by epoch), oldest first."""
    base = store.runs_dir / task_id
    if not base.is_dir():
        return []
    return sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def show_log(config: FleetConfig, task_id: str, *, follow: bool, stream: str = "stdout",
             run: int | None = None) -> None:
    """Copy the log to stdout; with ``follow``, keep going while the task is pending or running."""
    store = FileStore(config.state_dir)
    if not run_dirs(store, task_id) and store.read_record(task_id) is None \
            and task_id not in load_cached(config).tasks:
        # Checked only when there is nothing to show, so a typo fails fast instead of following forever.
        raise TaskError(f"no task {task_id!r}; `coordinator tasks` lists them", task_id=task_id)
    if not follow:
        path = _pick(store, task_id, run)
        if path is None:
            raise TaskError(f"task {task_id!r} has no {stream} log yet; `coordinator logs -f {task_id}` waits "
                            "for it", task_id=task_id)
        sys.stdout.write((path / f"{stream}.log").read_text(encoding="utf-8", errors="replace")
                         if (path / f"{stream}.log").exists() else "")
        return
    _follow(store, task_id, stream, run)


def _pick(store: FileStore, task_id: str, run: int | None) -> Path | None:
    dirs = run_dirs(store, task_id)
    if run is not None:
        dirs = [d for d in dirs if d.name == str(run)]
    return dirs[-1] if dirs else None


def _follow(store: FileStore, task_id: str, stream: str, run: int | None) -> None:
    current, offset = None, 0
    while True:
        path = _pick(store, task_id, run)
        if path != current and path is not None:
            current, offset = path, 0
        if current is not None:
            offset = _copy_from(current / f"{stream}.log", offset)
        record = store.read_record(task_id)
        active = record is None or record.state in ("pending", "running")
        if not active and (run is not None or _pick(store, task_id, None) == current):
            if current is not None:
                _copy_from(current / f"{stream}.log", offset)
            return
        time.sleep(FOLLOW_POLL_S)


def _copy_from(path: Path, offset: int) -> int:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return offset
    if data:
        sys.stdout.write(data.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return offset + len(data)
