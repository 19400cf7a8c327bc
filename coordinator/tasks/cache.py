"""A persistent cache of parsed task files, so `tasks` and `status` skip re-parsing.

Parsing 10,000 task files costs ~0.8 s; loading them from this cache ~0.05 s,
after which ``TaskIndex.refresh`` re-parses only files whose (path, mtime,
size, inode) changed. The cache lives in the state dir, next to everything else
the coordinator trusts, and is keyed by the cache format, the package version
and the parsed fleet.toml (task validity depends on it: an ``agent`` must name
an ``[agents.*]`` table). Anything unreadable or from another key is ignored and
rebuilt: the cache can make a read faster, never wrong.
"""

from __future__ import annotations

import hashlib
import pickle
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..atomic import PRIVATE_DIR, write_bytes_atomic
from ..config import FleetConfig
from .graph import TaskSet
from .index import TaskIndex, no_gc

FORMAT = 2  # 2: InvalidFile.more and symlinks leading outside the root


def cache_path(config: FleetConfig) -> Path:
    """Where the cache of this fleet's parsed task files lives."""
    return config.state_dir / "cache" / "tasks.pickle"


def cache_key(config: FleetConfig) -> str:
    """Changes whenever a cached parse could be stale for reasons other than the file itself."""
    try:
        package = version("coordinator")
    except PackageNotFoundError:
        package = "dev"
    digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]
    return f"{FORMAT}:{package}:{digest}"


def open_index(config: FleetConfig) -> TaskIndex:
    """A TaskIndex primed from the cache when it is valid (else empty)."""
    index = TaskIndex(config)
    try:
        with open(cache_path(config), "rb") as fh, no_gc():
            key, (files, taskset) = pickle.load(fh)  # noqa: S301  (our own state dir, written by save_index)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError):
        return index
    if key == cache_key(config) and isinstance(files, dict):
        index.prime(files, taskset)
    return index


def load_cached(config: FleetConfig) -> TaskSet:
    """The fleet's tasks through the cache: re-parses only changed files, then saves."""
    index = open_index(config)
    taskset = index.refresh()
    save_index(config, index)
    return taskset


def save_index(config: FleetConfig, index: TaskIndex) -> None:
    """Write the index's parsed files, atomically, if they changed since it was primed."""
    if not index.dirty:
        return
    path = cache_path(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        data = pickle.dumps((cache_key(config), index.export()), protocol=pickle.HIGHEST_PROTOCOL)
        write_bytes_atomic(path, data)
    except OSError:
        return  # a read-only or full state dir costs speed, not correctness
    index.dirty = False
