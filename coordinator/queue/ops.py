"""User actions on the queue, as data: add a task file, retry a task, cancel a task.

The CLI, and later the HTTP API and the MCP server, call these and render what
they return. State changes go through the store's operations (``store.base``);
a new task is a new file in ``tasks/``, written atomically and never over another.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

from ..atomic import write_new_file
from ..config import FleetConfig
from ..errors import ConfigError, TaskError
from ..liveness import HOST, process_is_alive
from ..store import Record, open_store
from ..tasks import TaskSet
from ..tasks.cache import load_cached
from ..tasks.model import ID_RULE, is_valid_id


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
        if not is_valid_id(task_id):
            raise ConfigError(f"{task_id!r} is not a task id: it {ID_RULE}", key="--id")
        if task_id in existing:
            raise TaskError(f"task {task_id!r} already exists in {existing[task_id].source}; pick another --id",
                            task_id=task_id)
    if agent is not None:
        config.agent_named(agent, key="--agent")
    for dep in depends_on or []:
        if not is_valid_id(dep):
            raise ConfigError(f"{dep!r} is not a task id: it {ID_RULE}", key="--depends-on")
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
        if name not in existing and write_new_file(config.tasks_dir / f"{name}.toml", text.encode("utf-8")):
            return config.tasks_dir / f"{name}.toml"
    raise TaskError(f"tasks/{base}.toml already exists; pick another --id", task_id=base)


def retry_task(config: FleetConfig, task_id: str) -> Record:
    """Put a failed, done or cancelled task back in the queue with fresh attempts."""
    require_task(load_cached(config), task_id)
    return open_store(config).retry(task_id)


def cancel_task(config: FleetConfig, task_id: str) -> Record:
    """Cancel a pending or running task; a running one is stopped at once."""
    require_task(load_cached(config), task_id)
    record, claim = open_store(config).cancel(task_id)
    if claim and claim.host == HOST and process_is_alive(claim.pid, claim.pid_started_at):
        os.kill(claim.pid, signal.SIGUSR1)  # the agent checks its claim now and kills the runner
    return record


def require_task(taskset: TaskSet, task_id: str) -> None:
    """``task_id`` must name a valid task (the one "no task" message)."""
    if task_id not in taskset.tasks:
        raise TaskError(f"no task {task_id!r}; `coordinator tasks` lists them", task_id=task_id)
