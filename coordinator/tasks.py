"""The Task model, and loading task files into a TaskSet (DESIGN §3).

A file holds one task (top-level keys) or several (``[[tasks]]``). Each file is
parsed on its own by ``taskfile.py`` and cached by ``TaskIndex`` under its
(mtime_ns, size, inode), so an agent re-reads only files that changed;
``taskgraph.py`` then resolves ids and dependencies across files. Bad input is
never raised: every problem becomes one ``InvalidFile`` line naming the file,
the line when known, the field and the fix.
"""

from __future__ import annotations

import gc
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from .config import FleetConfig
from .taskgraph import FileResult, InvalidFile, TaskSet, build_taskset

__all__ = ["PRIORITY_NAMES", "Task", "InvalidFile", "TaskSet", "TaskIndex", "load_tasks", "load_paths",
           "task_json_schema"]

PRIORITY_NAMES = {"critical": 0, "high": 1, "normal": 2, "low": 3}
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ID_RULE = ("must start with a letter or digit and use only letters, digits, '.', '_' and '-' "
           "(at most 128 characters)")
TITLE_MAX = 80
_PLACEHOLDER = re.compile(r"\{([^{}\s]+)\}")
# Files written this recently may still change within one mtime tick; they are re-read once more.
RACY_NS = 1_000_000_000

TaskId = Annotated[str, Field(pattern=ID_PATTERN)]
Scalar = str | int | float | bool


class Task(BaseModel):
    """One task as its file defines it, plus where the loader found it (source, index, seen_ns)."""

    # strict: TOML is typed, so "3" is not silently an int and true is not 1.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: TaskId = Field(description="unique across the fleet; defaults to the file name without .toml")
    prompt: str = Field(description="what to do")
    title: str = Field("", description="for display; defaults to the prompt's first line")
    priority: int = Field(2, ge=0, description='lower runs first: an int >= 0 or "critical", "high", '
                                               '"normal", "low"')
    depends_on: list[TaskId] = Field(default_factory=list, description="ids that must be done before this task runs")
    agent: str | None = Field(None, description="an [agents.NAME] table of fleet.toml")
    model: str | None = Field(None, description="model alias; defaults to the agent's")
    context: list[str] = Field(default_factory=list, description="globs of files inlined into the prompt, inside the fleet root")
    workdir: str | None = Field(None, description="where a command runner runs, inside the fleet root")
    timeout_s: float | None = Field(None, gt=0, description="seconds before an attempt is killed")
    max_attempts: int = Field(3, ge=1, description="attempts before the task is failed")
    acceptance: list[str] | None = Field(None, description='argv that must exit 0, e.g. ["pytest", "-q"]')
    max_tokens_budget: float | None = Field(None, gt=0, description="token budget enforced by the gateway")
    max_usd: float | None = Field(None, gt=0, description="USD budget enforced by the gateway")
    labels: list[str] = Field(default_factory=list, description="free-form labels")
    vars: dict[str, Scalar] = Field(default_factory=dict, description="values for {name} placeholders in the prompt")
    # Set by the loader, never by a file; excluded from dumps so a task's hash is its definition.
    source: SkipJsonSchema[str] = Field("", exclude=True)
    index: SkipJsonSchema[int] = Field(0, exclude=True)
    seen_ns: SkipJsonSchema[int] = Field(0, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _default_title(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("prompt"), str):
            title = data.get("title")
            if title is None or (isinstance(title, str) and not title.strip()):
                data = {**data, "title": first_line(data["prompt"])}
        return data

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            number = PRIORITY_NAMES.get(value.strip().lower())
            if number is None:
                raise ValueError("must be an integer >= 0 or one of " + ", ".join(PRIORITY_NAMES))
            return number
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ValueError("must be 0 or more (0 runs first), or one of " + ", ".join(PRIORITY_NAMES))
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty; write what the task should do")
        return value

    @field_validator("acceptance", mode="before")
    @classmethod
    def _argv(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError('must be an argv list such as ["pytest", "-q"], not one string')
        if isinstance(value, list) and (not value or (isinstance(value[0], str) and not value[0].strip())):
            raise ValueError('needs a program first, e.g. ["pytest", "-q"]; or remove the key')
        return value

    @field_validator("vars", mode="before")
    @classmethod
    def _scalar_vars(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, item in value.items():
                if isinstance(item, (dict, list)) or not isinstance(item, (str, int, float, bool)):
                    kind = "a table" if isinstance(item, dict) else "an array" if isinstance(item, list) \
                        else f"a {type(item).__name__}"
                    raise ValueError(f"vars.{name} is {kind}; use a string, number or boolean")
        return value

    def sort_key(self) -> tuple[int, int, str, int, str]:
        """Run order: priority, then first seen (file mtime), then file and position, then id."""
        return (self.priority, self.seen_ns, self.source, self.index, self.id)

    def rendered_prompt(self) -> str:
        """The prompt with ``{name}`` replaced from vars; other braces are left untouched."""
        if not self.vars:
            return self.prompt
        return _PLACEHOLDER.sub(self._substitute, self.prompt)

    def _substitute(self, match: re.Match[str]) -> str:
        value = self.vars.get(match.group(1))
        if value is None:
            return match.group(0)
        if isinstance(value, bool):
            return "true" if value else "false"  # as the TOML file spells it
        return str(value)


def first_line(prompt: str) -> str:
    """The prompt's first non-empty line, cut to TITLE_MAX characters."""
    for line in prompt.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= TITLE_MAX else line[:TITLE_MAX - 1] + "…"
    return ""


class TaskIndex:
    """Task files parsed once and kept by (path, mtime_ns, size, inode); refresh() re-reads changes only."""

    def __init__(self, config: FleetConfig) -> None:
        from .taskfile import TaskFileParser  # taskfile imports Task from here

        self.parser = TaskFileParser(config)
        self.tasks_dir = Path(config.root).resolve() / config.fleet.tasks_dir
        self.prefix = _display_prefix(self.parser.root, self.tasks_dir)
        self._files: dict[str, _Cached] = {}
        self._taskset: TaskSet | None = None
        self.dirty = False  # parsed something since prime(): worth saving (taskcache.py)

    def export(self) -> tuple[dict[str, _Cached], TaskSet | None]:
        """The parsed files by source path and the TaskSet built from them, for the persistent cache."""
        return self._files, self._taskset

    def prime(self, files: dict[str, _Cached], taskset: TaskSet | None) -> None:
        """Start from an earlier parse (taskcache.py); refresh() still re-checks every file's key."""
        self._files, self._taskset = files, taskset

    @property
    def parsed(self) -> int:
        """How many times a file was parsed (tests use it to prove unchanged files are skipped)."""
        return self.parser.parsed

    def refresh(self) -> TaskSet:
        """The current TaskSet; re-parses only new or changed files (shared object: do not mutate)."""
        with no_gc():
            found = scan_folder(self.tasks_dir, self.prefix)
            changed = self._taskset is None or found.keys() != self._files.keys()
            now = time.time_ns()
            files: dict[str, _Cached] = {}
            for source, (path, key) in found.items():
                old = self._files.get(source)
                if old is not None and old.key == key and not old.racy:
                    files[source] = old
                    continue
                result = self.parser.parse(path, source, key)
                files[source] = _Cached(key, result, len(key) == 3 and abs(now - key[0]) < RACY_NS)
                self.dirty = True
                changed = changed or old is None or old.result != result
            self.dirty = self.dirty or files.keys() != self._files.keys()
            self._files = files
            if changed:
                ordered = [files[source].result for source in sorted(files)]
                self._taskset = build_taskset(ordered, self.parser.locate)
        assert self._taskset is not None
        return self._taskset


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic GC while parsing: thousands of new acyclic objects would trigger it
    over and over (it cost about half of a cold load of 10,000 files)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class _Cached:
    key: tuple[Any, ...]
    result: FileResult
    racy: bool


def load_tasks(config: FleetConfig) -> TaskSet:
    """Every task file under the fleet's tasks folder, validated (never raises for bad files)."""
    return TaskIndex(config).refresh()


def load_paths(config: FleetConfig, paths: list[Path]) -> TaskSet:
    """Only the given files and folders (for ``coordinator validate PATH...``), resolved among themselves."""
    from .taskfile import TaskFileParser

    parser = TaskFileParser(config)
    found: dict[str, tuple[str, tuple[Any, ...]]] = {}
    for given in paths:
        path = Path(given)
        shown = _display_prefix(parser.root, path.absolute()).rstrip("/")
        if path.is_dir():
            found.update(scan_folder(path, shown + "/"))
        else:
            found[shown] = (str(path), stat_key(path))
    # Path order by real location, so files outside the root interleave as they lie on disk.
    order = sorted(found, key=lambda source: os.path.abspath(found[source][0]))
    with no_gc():
        results = [parser.parse(found[source][0], source, found[source][1]) for source in order]
        return build_taskset(results, parser.locate)


def scan_folder(top: Path, prefix: str) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """``{source: (path, key)}`` for every ``*.toml`` under ``top``, hidden names skipped.

    ``key`` is (mtime_ns, size, inode) for a regular file, else a one-word problem
    tuple. Folder symlinks are followed once each (loops are cut by inode).
    """
    found: dict[str, tuple[str, tuple[Any, ...]]] = {}
    try:
        top_stat = os.stat(top)
    except OSError:
        return found  # no tasks folder yet: no tasks
    visited = {(top_stat.st_dev, top_stat.st_ino)}
    stack = [(str(top), prefix)]
    while stack:
        folder, rel = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            found[rel.rstrip("/")] = (folder, ("unlistable",))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # editor swap files, .git and the like
            source = rel + entry.name
            if entry.name.endswith(".toml"):
                key = stat_key(entry)  # one stat tells file from folder (d_type may be missing)
                found[source] = (entry.path, key)
                if key != ("folder",):
                    continue
            elif not _is_dir(entry):
                continue
            _descend(entry, source, stack, visited)
    return found


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _descend(entry: os.DirEntry[str], source: str, stack: list[tuple[str, str]],
             visited: set[tuple[int, int]]) -> None:
    try:
        st = entry.stat()
    except OSError:
        return
    ident = (st.st_dev, st.st_ino)
    if ident not in visited:
        visited.add(ident)
        stack.append((entry.path, source + "/"))


def stat_key(entry: os.DirEntry[str] | Path) -> tuple[Any, ...]:
    """(mtime_ns, size, inode) of a regular file, or a problem tuple: ("folder",), ("special",), ..."""
    try:
        info = entry.stat()
    except OSError as exc:
        broken = entry.is_symlink() if isinstance(entry, os.DirEntry) else Path(entry).is_symlink()
        return ("broken-symlink",) if broken else ("unreadable", exc.strerror or str(exc))
    if stat.S_ISREG(info.st_mode):
        return (info.st_mtime_ns, info.st_size, info.st_ino)
    return ("folder",) if stat.S_ISDIR(info.st_mode) else ("special",)


def _display_prefix(root: Path, folder: Path) -> str:
    """How paths under ``folder`` are shown: relative to the fleet root (posix) when inside it."""
    try:
        rel = folder.resolve().relative_to(root)
    except (ValueError, OSError):
        return folder.as_posix().rstrip("/") + "/"
    text = rel.as_posix()
    return "" if text == "." else text + "/"


def task_json_schema() -> dict[str, Any]:
    """JSON Schema of a task file: one task as top-level keys, or a ``[[tasks]]`` array of them."""
    task = Task.model_json_schema()
    defs = task.pop("$defs", {})
    task["description"] = "One task: what to do, and how and when to run it."
    task["required"] = [name for name in task.get("required", []) if name != "id"]
    props = task["properties"]
    for name, prop in props.items():
        props[name] = _without_null(prop)
    props["priority"] = {"anyOf": [{"type": "integer", "minimum": 0}, {"enum": list(PRIORITY_NAMES)}],
                         "default": 2, "description": props["priority"].get("description", "")}
    props["prompt"]["pattern"] = r"\S"  # not blank
    props["title"].pop("default", None)
    props["acceptance"]["minItems"] = 1
    defs["Task"] = task
    many = {"type": "object", "additionalProperties": False, "required": ["tasks"],
            "properties": {"tasks": {"type": "array", "minItems": 1,
                                     "items": {"allOf": [{"$ref": "#/$defs/Task"}, {"required": ["id"]}]}}}}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "coordinator task file",
            "description": "One task as top-level keys, or several as [[tasks]] tables (each with an id).",
            "$defs": defs, "oneOf": [{"$ref": "#/$defs/Task"}, many]}


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` as plain X: TOML has no null, a missing key is how a file says "none"."""
    options = prop.get("anyOf")
    if not options or {"type": "null"} not in options:
        return prop
    rest = [option for option in options if option != {"type": "null"}]
    out = {key: value for key, value in prop.items() if key != "anyOf" and not (key == "default" and value is None)}
    return {**out, **rest[0]} if len(rest) == 1 else {**out, "anyOf": rest}
