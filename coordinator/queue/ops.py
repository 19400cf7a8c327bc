"""User actions on the queue, as data: add a task file, retry, cancel, pause and resume.

The CLI, and later the HTTP API and the MCP server, call these and render what
they return. State changes go through the store's operations (``store.base``);
a new task is a new file in ``tasks/``, written atomically and never over another.
Retry and cancel name a task's derived state (invalid, blocked) when that is why
they cannot act, so no caller has to work it out again.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any, TextIO

from ..atomic import write_new_file
from ..config import FleetConfig
from ..errors import ConfigError, TaskError
from ..liveness import HOST, process_is_alive
from ..store import Record, open_store
from ..tasks import State, TaskSet
from ..tasks.cache import load_cached
from ..tasks.model import ID_RULE, PRIORITY_NAMES, is_valid_id, priority_number


def slug_id(prompt: str) -> str:
    """An id made from the prompt's first words: ``fix-the-login-bug``."""
    words = re.findall(r"[A-Za-z0-9]+", prompt.lower())
    slug = "-".join(words)[:48].strip("-")
    return slug or "task"


def priority_value(priority: str | int) -> str | int:
    """How a priority is written into a file: a name stays a name (``"high"``), a number a number."""
    if isinstance(priority, str) and priority.strip().lower() in PRIORITY_NAMES:
        return priority.strip().lower()
    return priority_number(int(priority) if isinstance(priority, str) else priority)


def add_task(config: FleetConfig, prompt: str, *, task_id: str | None = None, priority: str | int = 2,
             depends_on: list[str] | None = None, agent: str | None = None) -> Path:
    """Write ``tasks/<id>.toml`` atomically; never overwrite a file, reuse an id or duplicate a prompt."""
    import tomli_w  # noqa: PLC0415  (only `add` writes TOML)

    if not prompt.strip():
        raise ConfigError("the prompt is empty; say what the task should do", key="PROMPT")
    taskset = load_cached(config)
    _check_new_id(taskset, prompt, task_id)
    if agent is not None:
        config.agent_named(agent, key="--agent")
    for dep in depends_on or []:
        if not is_valid_id(dep):
            raise ConfigError(f"{dep!r} is not a task id: it {ID_RULE}", key="--depends-on")
    data: dict[str, Any] = {"prompt": prompt, "priority": priority_value(priority)}
    if depends_on:
        data["depends_on"] = depends_on
    if agent:
        data["agent"] = agent
    name = task_id or slug_id(prompt)
    path = config.tasks_dir / f"{name}.toml"
    _tasks_folder(config)
    if not write_new_file(path, tomli_w.dumps(data).encode("utf-8")):  # the stem is the id: no id key needed
        raise TaskError(f"tasks/{name}.toml already exists; pick another --id", task_id=name)
    return path


def unknown_dependencies(config: FleetConfig, task_id: str) -> list[str]:
    """The dependencies of ``task_id`` that name no task (``add`` warns: the task stays blocked until they exist)."""
    taskset = load_cached(config)
    task = taskset.tasks.get(task_id)
    if task is not None:
        return [dep for dep in task.depends_on if dep not in taskset.tasks and dep not in
                {b.task_id for b in taskset.invalid}]
    return []


def read_prompt(prompt: str | None, file: str | None, stdin: TextIO) -> str:
    """The prompt from the argument, or from ``--file F`` / ``--file -`` (``stdin``); exactly one of them."""
    if (prompt is None) == (file is None):
        raise ConfigError("give the prompt as an argument or with --file F (- for stdin), not both or neither",
                          key="PROMPT")
    if file is None:
        return prompt or ""
    if file == "-":
        return stdin.read()
    try:
        return Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"cannot read {file} ({reason}); give a readable UTF-8 text file", key="--file") from exc


def _check_new_id(taskset: TaskSet, prompt: str, task_id: str | None) -> None:
    """An explicit id must be free; without one, the same prompt twice is an error naming the first task."""
    if task_id is not None:
        if not is_valid_id(task_id):
            raise ConfigError(f"{task_id!r} is not a task id: it {ID_RULE}", key="--id")
        if task_id in taskset.tasks:
            raise TaskError(f"task {task_id!r} already exists in {taskset.tasks[task_id].source}; pick another --id",
                            task_id=task_id)
        return
    same = next((t for t in taskset.tasks.values() if t.prompt == prompt), None)
    if same is not None:
        raise TaskError(f"task {same.id!r} ({same.source}) already has this prompt; `coordinator retry {same.id}` "
                        "runs it again, or pass --id NAME to add a second task", task_id=same.id)


def _tasks_folder(config: FleetConfig) -> None:
    """Make sure the tasks folder exists and is a folder (one-line errors otherwise)."""
    if config.tasks_dir.exists() and not config.tasks_dir.is_dir():
        raise ConfigError(f"{config.tasks_dir} is a file, not the tasks folder; move it away or set "
                          "[fleet] tasks_dir", key="fleet.tasks_dir")
    try:
        config.tasks_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file named like the folder, or no permission
        raise ConfigError(f"cannot use {config.tasks_dir} as the tasks folder ({exc.strerror}); "
                          "make it a writable folder", key="fleet.tasks_dir") from exc


def retry_task(config: FleetConfig, task_id: str) -> Record:
    """Put a failed, done or cancelled task back in the queue with fresh attempts."""
    store = open_store(config)
    taskset = load_cached(config)
    require_task(taskset, task_id)
    record = store.read_record(task_id)
    if record is None or record.state == State.PENDING:
        reason = blocked_reason(config, taskset, task_id)
        if reason is not None:
            raise TaskError(f"task {task_id!r} is blocked ({reason}); it runs once that is fixed, and only "
                            "failed, done or cancelled tasks can be retried", task_id=task_id)
    return store.retry(task_id)


def retry_failed(config: FleetConfig) -> list[str]:
    """Retry every failed task (``retry --failed``); the ids retried, in task order."""
    store = open_store(config)
    failed = {r.id for r in store.iter_records() if r.state == State.FAILED}
    retried = []
    for task_id in load_cached(config).tasks:
        if task_id in failed:
            store.retry(task_id)
            retried.append(task_id)
    return retried


def cancel_task(config: FleetConfig, task_id: str) -> Record:
    """Cancel a pending (or blocked) or running task; a running one is stopped at once."""
    require_task(load_cached(config), task_id)
    record, claim = open_store(config).cancel(task_id)
    if claim and claim.host == HOST and process_is_alive(claim.pid, claim.pid_started_at):
        os.kill(claim.pid, signal.SIGUSR1)  # the agent checks its claim now and kills the runner
    return record


def set_paused(config: FleetConfig, paused: bool) -> bool:
    """Pause (agents claim nothing new; running tasks finish) or resume; whether it changed."""
    return open_store(config).set_paused(paused)


def blocked_reason(config: FleetConfig, taskset: TaskSet, task_id: str) -> str | None:
    """Why a pending task can never run (a dependency unknown, invalid, failed or cancelled), if so."""
    from .view import QueueView  # noqa: PLC0415  (reads every record: only when a command needs it)

    store = open_store(config)
    view = QueueView(config, store)
    view.resync(build_heap=False)
    if view.states.get(task_id, State.PENDING) != State.PENDING:
        return None
    return view.blocked_reason(task_id)


def require_task(taskset: TaskSet, task_id: str) -> None:
    """``task_id`` must name a valid task: "invalid" (with why) for a bad file's id, else "no task"."""
    if task_id in taskset.tasks:
        return
    bad = next((b for b in taskset.invalid if b.task_id == task_id), None)
    if bad is not None:
        raise TaskError(f"task {task_id!r} is invalid: {bad.error}; fix the file (`coordinator validate` "
                        "lists every problem)", task_id=task_id)
    raise TaskError(f"no task {task_id!r}; `coordinator tasks` lists them", task_id=task_id)
