"""Parse one task file into a FileResult; every problem becomes one InvalidFile line.

This is the per-file half of loading (``TaskIndex`` caches its results by file
stat; ``taskgraph`` does the cross-file half). It is the hot path of a cold
load, so it does the least work a valid file needs: one read, one ``tomllib``
parse, one ``model_validate``. Line numbers are looked up only for errors.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import FleetConfig
from ..errors import ConfigError
from ..paths import confine, expand_globs
from .graph import FileResult, InvalidFile, invalid_entry
from .model import ID_RULE, Task, is_valid_id
from ..validation import TYPE_FIXES, all_errors, decode_error_line, header_lines, key_line, toml_error_line, toml_error_reason

MAX_FILE_BYTES = 1 << 20
LOADER_FIELDS = frozenset({"source", "index", "seen_ns"})
FILE_KEYS = tuple(name for name in Task.model_fields if name not in LOADER_FIELDS)
_FIXES = {**TYPE_FIXES, "string_pattern_mismatch": ID_RULE}
_PROBLEMS = {
    "folder": "is a folder, not a task file; rename it so its name does not end in .toml",
    "special": "is not a regular file; task files must be plain .toml files",
    "broken-symlink": "is a broken symlink; point it at a task file or remove it",
    "unlistable": "cannot list this folder; check its permissions",
    "outside": "is a symlink that leads outside the fleet root; move what it points at inside, or remove the link",
}
Problem = tuple[str, str]  # (field, message)
Problems = list[Problem]  # every problem of one task, the first one first


class TaskFileParser:
    """Parses task files against one fleet config (its root and agent names)."""

    def __init__(self, config: FleetConfig) -> None:
        self.root = Path(config.root).resolve()
        self.config = config
        self.parsed = 0

    def parse(self, path: str, source: str, key: tuple[Any, ...]) -> FileResult:
        """Parse the file at ``path`` (shown as ``source``) whose stat key is ``key``; never raises."""
        self.parsed += 1
        try:
            return self._parse(path, source, key)
        except Exception as exc:  # noqa: BLE001 - a bug met by one odd file must cost that file, not the fleet
            return _file_error(source, f"could not be loaded ({type(exc).__name__}: {exc}); "
                                       "please report this with the file attached")

    def _parse(self, path: str, source: str, key: tuple[Any, ...]) -> FileResult:
        if len(key) != 3:
            reason = _PROBLEMS.get(key[0]) or f"cannot read it ({key[-1]}); check that it exists and is readable"
            return _file_error(source, reason)
        if key[1] > MAX_FILE_BYTES:
            return _file_error(source, _too_big(key[1]))
        text = _read(path, source, key[1])
        if isinstance(text, InvalidFile):
            return FileResult(source, invalid=[text])
        return self._parse_text(source, text, key[0], os.path.splitext(os.path.basename(path))[0])

    def parse_text(self, source: str, text: str, stem: str, mtime_ns: int = 0) -> FileResult:
        """Parse task-file ``text`` not on this disk, as if it were ``source`` named ``stem``.toml.

        The HTTP API's submissions, and files another host shared through the store.
        """
        self.parsed += 1
        size = len(text.encode("utf-8"))
        if size > MAX_FILE_BYTES:
            return _file_error(source, _too_big(size))
        return self._parse_text(source, text, mtime_ns, stem)

    def locate(self, source: str, index: int, key: str) -> int | None:
        """Line of ``key`` in task ``index`` of ``source``, re-reading the file (errors only)."""
        path = Path(source) if os.path.isabs(source) else self.root / source
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            return None
        in_array = any(header == "[[tasks]]" for _, header in header_lines(text))
        return field_line(text, key, index, in_array)

    def _parse_text(self, source: str, text: str, mtime_ns: int, stem: str) -> FileResult:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            return _file_error(source, toml_error_reason(exc), line=toml_error_line(exc))
        except RecursionError:  # tomllib recurses once per nesting level of arrays and inline tables
            return _file_error(source, "values are nested too deeply to parse; flatten them")
        if not data:
            return _file_error(source, 'has no task in it; add at least prompt = "..." '
                                       "(`coordinator schema` lists every key)")
        if "tasks" not in data:
            result = FileResult(source)
            self._add_task(result, data, 0, text, mtime_ns, stem)
            return result
        problem = _array_problem(data)
        if problem is not None:
            return _file_error(source, problem[1], line=field_line(text, problem[0], 0, False), key=problem[0])
        result = FileResult(source, in_array=True)
        for index, raw in enumerate(data["tasks"]):
            self._add_task(result, raw, index, text, mtime_ns, stem)
        return result

    def _add_task(self, result: FileResult, raw: dict[str, Any], index: int, text: str,
                  mtime_ns: int, stem: str) -> None:
        """Validate one task table and record it in ``result`` as valid or invalid."""
        task_id = _known_id(raw, stem, result.in_array)
        problems = _id_problem(raw, stem, result.in_array)
        # Validate the rest even when the id is a problem, so every problem is reported in one pass.
        data = {key: value for key, value in raw.items() if key not in LOADER_FIELDS}
        data.setdefault("id", stem if not problems else "placeholder")
        task, more = self._validate(data, result.source, index, mtime_ns)
        problems += more
        if not problems:
            assert task is not None
            result.entries.append((task.id, task))
            return
        prefix = f"tasks[{index}]." if result.in_array else ""
        entries = [invalid_entry(result.source, message, key=prefix + field, task_id=task_id,
                                 line=field_line(text, field, index, result.in_array)) for field, message in problems]
        entries.sort(key=lambda entry: entry.line or float("inf"))  # file order; unplaced ones last
        result.invalid.append(dataclasses.replace(entries[0], more=tuple(entries[1:])))
        if task_id is not None:
            result.entries.append((task_id, None))

    def _validate(self, data: dict[str, Any], source: str, index: int,
                  mtime_ns: int) -> tuple[Task | None, Problems]:
        """The task, or every problem it has (pydantic's field errors; else its references')."""
        try:
            task = Task.model_validate({**data, "source": source, "index": index, "seen_ns": mtime_ns})
        except ValidationError as exc:
            return None, all_errors(exc, fixes=_FIXES, known_keys=FILE_KEYS)
        problems = self._check_references(task)
        return (None, problems) if problems else (task, [])

    def _check_references(self, task: Task) -> Problems:
        """The agent must exist; context globs and workdir must stay inside the fleet root."""
        problems: Problems = []
        checks = [(task.agent is not None, lambda: self.config.agent_named(task.agent or "")),
                  (task.workdir is not None, lambda: confine(self.root, task.workdir or "", what="workdir")),
                  # missing_ok: a context file may be written by a dependency before this task runs
                  # (`coordinator validate` warns about patterns that match nothing).
                  (bool(task.context), lambda: expand_globs(self.root, list(task.context), what="context",
                                                            missing_ok=True))]
        for applies, check in checks:
            try:
                if applies:
                    check()
            except ConfigError as exc:
                problems.append((exc.key or "context", exc.reason))
        return problems


def _read(path: str, source: str, size: int) -> str | InvalidFile:
    """The file's text, or the InvalidFile saying why it cannot be had."""
    try:
        # os.read sized from stat: no 1 MiB buffer per file, and fewer syscalls than open().
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            data = os.read(fd, size + 1)
            if len(data) > size:  # it grew since stat: read on, up to just past the limit
                data += os.read(fd, MAX_FILE_BYTES + 1 - len(data))
        finally:
            os.close(fd)
    except OSError as exc:
        return invalid_entry(source, f"cannot read it ({exc.strerror or exc}); check that it exists and is readable")
    if len(data) > MAX_FILE_BYTES:
        return invalid_entry(source, _too_big(len(data)))
    try:
        return data.decode("utf-8-sig")  # -sig: tolerate the BOM some Windows editors write
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1].hex()
        line = decode_error_line(data, exc)
        return invalid_entry(source, f"is not UTF-8 text (byte 0x{bad}); save the file as UTF-8", line=line)


def _too_big(size: int) -> str:
    return (f"is {size} bytes, over the {MAX_FILE_BYTES // (1 << 20)} MiB limit for a task file; "
            "split it into smaller files or move long text into context files")


def _file_error(source: str, message: str, *, line: int | None = None, key: str | None = None) -> FileResult:
    return FileResult(source, invalid=[invalid_entry(source, message, line=line, key=key)])


def _array_problem(data: dict[str, Any]) -> Problem | None:
    """Why a file with a ``tasks`` key is not a well-formed [[tasks]] file, if it is not."""
    tasks = data["tasks"]
    if not isinstance(tasks, list) or not all(isinstance(item, dict) for item in tasks):
        return "tasks", "must be an array of tables: put each task under its own [[tasks]] header"
    stray = next((key for key in data if key != "tasks"), None)
    if stray is not None:
        return stray, "top-level key is not allowed beside [[tasks]]; move it into each [[tasks]] entry or remove it"
    if not tasks:
        return "tasks", 'has no task in it; add a [[tasks]] table with id = "..." and prompt = "..."'
    return None


def _id_problem(raw: dict[str, Any], stem: str, in_array: bool) -> Problems:
    """Loader-only keys, and a missing id that the file name cannot stand in for."""
    if not LOADER_FIELDS.isdisjoint(raw):
        reserved = next(key for key in raw if key in LOADER_FIELDS)
        return [(reserved, "unknown key (set by the coordinator, not by task files); remove it")]
    if "id" in raw:
        return []
    if in_array:
        return [("id", 'is required when a file holds [[tasks]]; add id = "..." to this task')]
    if not is_valid_id(stem):
        return [("id", (f"the file name {stem!r} is not a valid task id ({ID_RULE}); "
                        'add id = "..." or rename the file'))]
    return []


def _known_id(raw: dict[str, Any], stem: str, in_array: bool) -> str | None:
    """The id this table claims, when it is a well-formed one (used for duplicates and blocking)."""
    value = raw.get("id", None if in_array else stem)
    return value if isinstance(value, str) and is_valid_id(value) else None


def field_line(text: str, field: str, index: int, in_array: bool) -> int | None:
    """Best-effort line of ``field`` in task ``index``: its key, else its table header, else the task's header."""
    headers = header_lines(text)
    start, end = 1, None
    if in_array:
        starts = [number for number, header in headers if header == "[[tasks]]"]
        if index >= len(starts):
            return None  # an inline array (tasks = [{...}]) has no per-task header
        start = starts[index]
        end = starts[index + 1] - 1 if index + 1 < len(starts) else None
    if not field:
        return start if in_array else None
    leaf = field.split(".")[0].split("[")[0]
    own_end = next((number - 1 for number, _ in headers if number > start or (not in_array and number >= start)), end)
    line = key_line(text, field, start, end if "." in field else own_end)
    if line is None:
        line = next((number for number, header in headers if start <= number and (end is None or number <= end)
                     and header.strip("[]").split(".")[-1] == leaf), None)
    return line or (start if in_array else None)
