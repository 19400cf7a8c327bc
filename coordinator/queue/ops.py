"""User actions on the queue, as data: add a task file, retry, cancel, pause and resume.

The CLI, the HTTP API (``serve/``) and later the MCP server call these and render
what they return. State changes go through the store's operations (``store.base``);
a new task is a new file in ``tasks/``, written atomically and never over another.
Retry and cancel name a task's derived state (invalid, blocked) when that is why
they cannot act, so no caller has to work it out again.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..atomic import write_new_file
from ..config import FleetConfig
from ..errors import ConfigError, TaskError
from ..liveness import HOST, process_is_alive
from ..store import Record, Store, open_store
from .taskfiles import publish_written
from ..tasks import InvalidFile, State, Task, TaskSet
from ..tasks.cache import load_cached
from ..tasks.model import ID_RULE, PRIORITY_NAMES, is_valid_id, priority_number
from ..tasks.parse import TaskFileParser


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
    publish_written(config, [path], load=True)
    return path


@dataclass(frozen=True)
class Prepared:
    """A submitted task table, validated: its id, the file bytes to write, and whether the id is new."""

    task_id: str
    path: Path
    data: bytes
    is_new: bool  # False: an identical task has this id already (an idempotent resubmit)


_WRITING = threading.Lock()  # one server thread at a time checks and writes (the API's handlers share it)


def prepare_tables(config: FleetConfig, tables: list[Any], *, batch: bool = False,
                   taskset: TaskSet | None = None) -> list[Prepared]:
    """Validate task-file tables (the HTTP API's ``POST /tasks``) exactly as task files are validated.

    Each table becomes the text of ``tasks/<id>.toml`` and is parsed by the task-file
    parser, so a problem reads exactly as ``coordinator validate`` would print it for
    that file (``ConfigError``; ``key`` names the field, ``tasks[i].``-prefixed in a
    batch). A table without an id takes one from its prompt, as ``add`` does. An id
    taken by a different task, or twice in one batch, is a ``TaskError``.
    """
    import tomli_w  # noqa: PLC0415  (only adding writes TOML)

    parser, out = TaskFileParser(config), []
    taskset = taskset if taskset is not None else load_cached(config)  # a server passes the one it keeps
    for index, table in enumerate(tables):
        try:
            task, path, text = _parse_table(config, parser, tomli_w, table)
        except ConfigError as exc:
            if batch:
                exc.key = f"tasks[{index}].{exc.key}" if exc.key else f"tasks[{index}]"
            raise
        if any(p.task_id == task.id for p in out):
            raise TaskError(f"task {task.id!r} appears twice in this request; give each task its own id",
                            task_id=task.id)
        out.append(Prepared(task.id, path, text, _is_new(taskset, task, path, text)))
    return out


def write_prepared(config: FleetConfig, prepared: list[Prepared], store: Store | None = None) -> list[bool]:
    """Write each new task's file (never over another); per task, whether this call created it.

    On a shared store (Redis) the new files are published at once, through ``store`` when given.
    """
    _tasks_folder(config)
    created = []
    for item in prepared:
        made = item.is_new and write_new_file(item.path, item.data)
        if item.is_new and not made and item.path.read_bytes() != item.data:
            raise TaskError(f"{item.path.name} was written by someone else meanwhile; pick another id",
                            task_id=item.task_id)
        created.append(made)
    publish_written(config, [item.path for item, made in zip(prepared, created) if made], store)
    return created


def writing_lock() -> threading.Lock:
    """Held while a server thread checks the queue and writes task files (admission sees its own writes)."""
    return _WRITING


def _parse_table(config: FleetConfig, parser: TaskFileParser, tomli_w: Any, table: Any) -> tuple[Task, Path, bytes]:
    if not isinstance(table, dict):
        raise ConfigError("each task must be a JSON object of task-file keys (`coordinator schema` lists them)")
    table = {key: value for key, value in table.items() if value is not None}  # null: the key's default
    raw_id, prompt = table.get("id"), table.get("prompt")
    stem = raw_id if isinstance(raw_id, str) and is_valid_id(raw_id) else slug_id(str(prompt or ""))
    body = {key: value for key, value in table.items() if not (key == "id" and value == stem)}
    for key, value in body.items():
        try:
            tomli_w.dumps({key: value})
        except (TypeError, ValueError) as exc:
            raise ConfigError("holds a null or a value TOML cannot write; use strings, numbers, booleans, "
                              "lists and objects", key=key) from exc
    text = tomli_w.dumps(body)
    path = config.tasks_dir / f"{stem}.toml"
    result = parser.parse_text(os.path.relpath(path, config.root), text, stem)
    if result.invalid:
        raise _rejected(result.invalid[0])
    return result.entries[0][1], path, text.encode("utf-8")  # type: ignore[return-value]


def _rejected(bad: InvalidFile) -> ConfigError:
    """A ConfigError whose message is the file's problem exactly as ``validate`` prints it."""
    error = ConfigError(bad.error)
    error.path, error.key, error.line = bad.path, bad.field, bad.line
    return error


def _is_new(taskset: TaskSet, task: Task, path: Path, text: bytes) -> bool:
    """Whether ``task`` is new; False for an identical one already there; TaskError for a different one."""
    existing = taskset.tasks.get(task.id)
    if existing is not None and existing.model_dump() == task.model_dump():
        return False
    if existing is not None or any(bad.task_id == task.id for bad in taskset.invalid):
        where = existing.source if existing is not None else "an invalid task file"
        raise TaskError(f"task {task.id!r} already exists in {where}; pick another id", task_id=task.id)
    if path.exists() and path.read_bytes() != text:
        raise TaskError(f"{path.name} already exists; pick another id", task_id=task.id)
    return not path.exists()


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
    view = QueueView(config, store, loads=False)
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
