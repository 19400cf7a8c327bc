"""Task files on disk → a TaskSet: scanning the tasks folder, and the per-file parse cache.

Each file is parsed on its own by ``parse.py`` and kept by ``TaskIndex`` under
its (mtime_ns, size, inode), so an agent re-reads only files that changed;
``graph.py`` then resolves ids and dependencies across files. Bad input is never
raised: every problem becomes one ``InvalidFile`` line naming the file, the line
when known, the field and the fix.
"""

from __future__ import annotations

import gc
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import FleetConfig
from ..errors import ConfigError
from ..paths import expand_globs
from .graph import FileResult, InvalidFile, TaskSet, build_taskset, invalid_entry
from .parse import TaskFileParser

# Files written this recently may still change within one mtime tick; they are re-read once more.
RACY_NS = 1_000_000_000


class TaskIndex:
    """Task files parsed once and kept by (path, mtime_ns, size, inode); refresh() re-reads changes only."""

    def __init__(self, config: FleetConfig) -> None:
        self.parser = TaskFileParser(config)
        self.tasks_dir = Path(config.root).resolve() / config.fleet.tasks_dir
        self.prefix = _display_prefix(self.parser.root, self.tasks_dir)
        self._files: dict[str, _Cached] = {}
        self._taskset: TaskSet | None = None
        self.dirty = False  # parsed something since prime(): worth saving (taskcache.py)
        self.local: dict[str, tuple[str, tuple[Any, ...]]] = {}  # this disk's files at the last refresh
        # Files other hosts shared through the store (source → (sha256, mtime_ns, text)); a file
        # on this disk under the same source wins (queue/taskfiles.py).
        self.shared: dict[str, tuple[str, int, str]] = {}

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
            found = scan_folder(self.tasks_dir, self.prefix, self.parser.root)
            self.local = found
            shared = {source: (source, ("shared", digest, mtime_ns))
                      for source, (digest, mtime_ns, _) in self.shared.items() if source not in found}
            found = {**found, **shared}
            changed = self._taskset is None or found.keys() != self._files.keys()
            now = time.time_ns()
            files: dict[str, _Cached] = {}
            for source, (path, key) in found.items():
                old = self._files.get(source)
                if old is not None and old.key == key and not old.racy:
                    files[source] = old
                    continue
                result = self._parse(path, source, key)
                files[source] = _Cached(key, result, _is_stat(key) and abs(now - key[0]) < RACY_NS)
                self.dirty = True
                changed = changed or old is None or old.result != result
            self.dirty = self.dirty or files.keys() != self._files.keys()
            self._files = files
            if changed:
                ordered = [files[source].result for source in sorted(files)]
                self._taskset = build_taskset(ordered, self.parser.locate)
        assert self._taskset is not None
        return self._taskset


    def _parse(self, path: str, source: str, key: tuple[Any, ...]) -> FileResult:
        """A file on this disk, or one another host shared (its text came through the store)."""
        if key[0] != "shared":
            return self.parser.parse(path, source, key)  # a stat key, or an error's (parse.py)
        stem = os.path.splitext(os.path.basename(source))[0]
        return self.parser.parse_text(source, self.shared[source][2], stem, mtime_ns=key[2])


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


def _is_stat(key: tuple[Any, ...]) -> bool:
    """A file read from this disk: (mtime_ns, size, inode)."""
    return len(key) == 3 and isinstance(key[0], int)


@dataclass
class _Cached:
    key: tuple[Any, ...]
    result: FileResult
    racy: bool


def load_tasks(config: FleetConfig) -> TaskSet:
    """Every task file under the fleet's tasks folder, validated (never raises for bad files)."""
    return TaskIndex(config).refresh()


def load_paths(config: FleetConfig, paths: list[Path]) -> TaskSet:
    """Only the given files and folders (for ``coordinator validate PATH...``), judged within the fleet.

    The fleet's other task files are read too (through the parse cache), so a
    dependency or a duplicate id defined elsewhere counts; only the given files'
    tasks and problems are returned.
    """
    from .cache import open_index  # noqa: PLC0415  (cache.py imports this module)

    parser = TaskFileParser(config)
    found: dict[str, tuple[str, tuple[Any, ...]]] = {}
    for given in paths:
        path = Path(given)
        shown = _display_prefix(parser.root, path.absolute()).rstrip("/")
        if path.is_dir():
            found.update(scan_folder(path, shown + "/"))
        else:
            found[shown] = (str(path), stat_key(path))
    index = open_index(config)
    index.refresh()
    fleet = {source: cached.result for source, cached in index.export()[0].items() if source not in found}
    with no_gc():
        results = {source: parser.parse(where, source, key) for source, (where, key) in found.items()}
        # Path order by real location, so files outside the root interleave as they lie on disk.
        where = {**{s: str(parser.root / s) for s in fleet}, **{s: found[s][0] for s in found}}
        order = sorted({**fleet, **results}, key=lambda source: os.path.abspath(where[source]))
        whole = build_taskset([results.get(s) or fleet[s] for s in order], parser.locate)
    return _only(whole, set(found))


def _only(whole: TaskSet, sources: set[str]) -> TaskSet:
    """The part of ``whole`` defined in ``sources``."""
    tasks = {task_id: task for task_id, task in whole.tasks.items() if task.source in sources}
    return TaskSet(tasks=tasks, invalid=[bad for bad in whole.invalid if bad.path in sources],
                   blocked={task_id: why for task_id, why in whole.blocked.items() if task_id in tasks},
                   dependents=whole.dependents)


def context_warnings(config: FleetConfig, taskset: TaskSet) -> list[InvalidFile]:
    """``context`` and ``shared_context`` patterns that match no file, for the llm runner (``validate``).

    A missing file fails every attempt of an llm task, yet is no error at load
    time: it may be created before the task runs. So ``validate`` warns, except
    for a task with dependencies, which may be the ones that write it.
    """
    root = Path(config.root).resolve()
    warnings = []
    for name, agent in config.agents.items():
        for pattern in agent.shared_context if agent.kind == "llm" else ():
            if not _matches(root, pattern):
                warnings.append(invalid_entry(str(config.config_path), _NO_MATCH.format(pattern=pattern),
                                              key=f"agents.{name}.shared_context"))
    for task in taskset.tasks.values():
        agent = config.agents.get(task.agent or config.fleet.default_agent)
        if task.depends_on or agent is None or agent.kind != "llm":
            continue
        for pattern in task.context:
            if not _matches(root, pattern):
                warnings.append(invalid_entry(task.source, _NO_MATCH.format(pattern=pattern), key="context",
                                              task_id=task.id))
    return warnings


_NO_MATCH = ("pattern {pattern!r} matches no file yet; every attempt of the llm runner fails until it does "
             "(fix the pattern, create the file, or depend on the task that writes it)")


def _matches(root: Path, pattern: str) -> bool:
    try:
        return bool(expand_globs(root, [pattern], what="context", missing_ok=True))
    except ConfigError:
        return True  # a pattern that escapes the root is an error reported by the parse, not a warning


def scan_folder(top: Path, prefix: str, root: Path | None = None) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """``{source: (path, key)}`` for every ``*.toml`` under ``top``, hidden names skipped.

    ``key`` is (mtime_ns, size, inode) for a regular file, else a one-word problem
    tuple. Folder symlinks are followed once each (loops are cut by inode). Given
    the fleet ``root``, a symlink (file or folder) that leads outside it is
    reported as ``("outside",)`` and never read or descended into.
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
            if root is not None and entry.is_symlink() and _leads_outside(entry.path, root):
                if entry.name.endswith(".toml") or _is_dir(entry):
                    found[source] = (entry.path, ("outside",))
                continue
            if entry.name.endswith(".toml"):
                key = stat_key(entry)  # one stat tells file from folder (d_type may be missing)
                found[source] = (entry.path, key)
                if key != ("folder",):
                    continue
            elif not _is_dir(entry):
                continue
            _descend(entry, source, stack, visited)
    return found


def _leads_outside(path: str, root: Path) -> bool:
    try:
        real = Path(os.path.realpath(path))
    except OSError:
        return False  # a broken link is reported as such by stat_key
    return not real.is_relative_to(root)


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


def display_source(root: Path, path: Path) -> str:
    """How a task file is named in reports and across hosts: its path from the fleet root."""
    return _display_prefix(root, path.parent) + path.name


def _display_prefix(root: Path, folder: Path) -> str:
    """How paths under ``folder`` are shown: relative to the fleet root (posix) when inside it."""
    try:
        rel = folder.resolve().relative_to(root)
    except (ValueError, OSError):
        return folder.as_posix().rstrip("/") + "/"
    text = rel.as_posix()
    return "" if text == "." else text + "/"


