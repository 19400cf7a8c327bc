"""User actions on the queue: add a task file, retry a task, cancel a task."""

from __future__ import annotations

import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Any

from .claims import HOST, process_is_alive
from .config import FleetConfig
from .errors import ConfigError, TaskError
from .store import FileStore, Record
from .taskcache import load_cached
from .tasks import PRIORITY_NAMES

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def parse_priority(value: str) -> int:
    """``"high"`` or ``"1"`` → 1; anything else is a usage error naming the choices."""
    if value in PRIORITY_NAMES:
        return PRIORITY_NAMES[value]
    if value.isdigit():
        return int(value)
    names = ", ".join(PRIORITY_NAMES)
    raise ConfigError(f"priority {value!r} is not a whole number >= 0 or one of: {names}", key="--priority")


def slug_id(prompt: str) -> str:
    """An id made from the prompt's first words: ``fix-the-login-bug``."""
    words = re.findall(r"[A-Za-z0-9]+", prompt.lower())
    slug = "-".join(words)[:48].strip("-")
    return slug or "task"


def add_task(config: FleetConfig, prompt: str, *, task_id: str | None = None, priority: int = 2,
             depends_on: list[str] | None = None, agent: str | None = None) -> Path:
    """Write ``tasks/<id>.toml`` atomically; never overwrite a file or reuse an id."""
    import tomli_w  # noqa: PLC0415  (only `add` writes TOML)

    if not prompt.strip():
        raise ConfigError("the prompt is empty; say what the task should do", key="PROMPT")
    existing = load_cached(config).tasks
    if task_id is not None:
        if not ID_PATTERN.match(task_id):
            raise ConfigError("ids are 1-128 of A-Z a-z 0-9 . _ - and start with a letter or digit",
                              key="--id")
        if task_id in existing:
            raise TaskError(f"task {task_id!r} already exists in {existing[task_id].source}; pick another --id",
                            task_id=task_id)
    if agent and agent not in config.agents:
        raise ConfigError(f"agent {agent!r} is not defined; add [agents.{agent}] to fleet.toml", key="--agent")
    for dep in depends_on or []:
        if not ID_PATTERN.match(dep):
            raise ConfigError(f"{dep!r} is not a task id", key="--depends-on")
    data: dict[str, Any] = {"prompt": prompt, "priority": priority}
    if depends_on:
        data["depends_on"] = depends_on
    if agent:
        data["agent"] = agent
    text = tomli_w.dumps(data)  # the file stem is the id, so the file needs no id key
    if config.tasks_dir.exists() and not config.tasks_dir.is_dir():
        raise ConfigError(f"{config.tasks_dir} is a file, not the tasks folder; move it away or set "
                          "[fleet] tasks_dir", key="fleet.tasks_dir")
    try:
        config.tasks_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file named like the folder, or no permission
        raise ConfigError(f"cannot use {config.tasks_dir} as the tasks folder ({exc.strerror}); "
                          "make it a writable folder", key="fleet.tasks_dir") from exc
    base = task_id or slug_id(prompt)
    names = [base] if task_id else [base] + [f"{base}-{n}" for n in range(2, 1000)]
    for name in names:
        if name not in existing and _write_new(config.tasks_dir / f"{name}.toml", text):
            return config.tasks_dir / f"{name}.toml"
    raise TaskError(f"tasks/{base}.toml already exists; pick another --id", task_id=base)


def _write_new(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` atomically; False if it already exists."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.link(tmp, path)  # link() fails if the name exists: no overwrite, no race
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def retry_task(config: FleetConfig, task_id: str) -> Record:
    """Put a failed, done or cancelled task back in the queue with fresh attempts."""
    store = FileStore(config.state_dir)
    _require_task(config, task_id)
    with store.lock():
        record = store.read_record(task_id) or Record(id=task_id)
        if record.state not in ("failed", "done", "cancelled"):
            raise TaskError(f"task {task_id!r} is {record.state}; only failed, done or cancelled tasks "
                            "can be retried", task_id=task_id)
        previous = record.state
        record.state, record.attempts, record.last_error = "pending", 0, None
        store.write_record(record)
        store.append_event("retried", task=task_id, previous=previous)
    return record


def cancel_task(config: FleetConfig, task_id: str) -> Record:
    """Cancel a pending or running task; a running one is stopped at once."""
    store = FileStore(config.state_dir)
    _require_task(config, task_id)
    with store.lock():
        record = store.read_record(task_id) or Record(id=task_id)
        if record.state in ("done", "failed", "cancelled"):
            raise TaskError(f"task {task_id!r} is already {record.state}", task_id=task_id)
        claim = store.read_claim(task_id)
        record.state = "cancelled"
        store.write_record(record)
        store.delete_claim(task_id)  # the holder's next renew or finish is fenced
        store.append_event("cancelled", task=task_id, agent=claim.agent if claim else None)
    if claim and claim.host == HOST and process_is_alive(claim.pid, claim.pid_started_at):
        os.kill(claim.pid, signal.SIGUSR1)  # the agent checks its claim now and kills the runner
    return record


def _require_task(config: FleetConfig, task_id: str) -> None:
    taskset = load_cached(config)
    if task_id not in taskset.tasks:
        raise TaskError(f"no task {task_id!r}; `coordinator tasks` lists them", task_id=task_id)
