"""Task files across hosts: each host publishes its own, and reads every other host's, through the store.

On the file store every process reads one ``tasks/`` folder, so nothing is
shared. On a store that hosts share (Redis) a task dropped into one host's
``tasks/``, or enqueued by ``add``, the HTTP API or MCP there, must run on any
host (DESIGN §13): each process that sees a task file publishes its text,
idempotently by content hash, and reads the files other hosts published when the
store's version of them moves (one round trip otherwise). A file on this disk
wins over a published one of the same name. Removing a file does not unpublish
it: cancel the task instead. Files a task reads (``context``, the repository)
must still exist on each host.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import FleetConfig
from ..store import Store
from ..tasks.graph import TaskSet
from ..tasks.index import TaskIndex, display_source


class SharedTaskFiles:
    """A TaskIndex kept in step with the store's shared task files."""

    def __init__(self, store: Store, index: TaskIndex) -> None:
        self.store = store
        self.index = index
        self.published: dict[str, tuple[Any, ...]] = {}  # source → the stat key it was published at
        self.version: int | None = None

    def refresh(self) -> TaskSet:
        """The TaskSet of this disk's files and, on a shared store, every host's."""
        taskset = self.index.refresh()
        if not self.store.shares_task_files:
            return taskset
        self._publish()
        version, files = self.store.read_task_files(self.version)
        if files is not None:
            self.version, self.index.shared = version, files
            taskset = self.index.refresh()
        return taskset

    def _publish(self) -> None:
        """Publish the files of this disk that are new or changed since this process last did."""
        fresh = {source: (path, key) for source, (path, key) in self.index.local.items()
                 if self.published.get(source) != key}
        out = {source: shared for source, (path, key) in fresh.items() if (shared := read_shared(path, key))}
        if out:
            self.store.share_task_files(out)
        self.published.update({source: key for source, (_, key) in fresh.items()})


def read_shared(path: str, key: tuple[Any, ...]) -> tuple[str, int, str] | None:
    """(sha256, mtime_ns, text) of a task file, or None when it cannot be read (it is invalid here anyway)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    mtime_ns = key[0] if isinstance(key[0], int) else 0
    return hashlib.sha256(data).hexdigest(), mtime_ns, data.decode("utf-8", errors="replace")


def publish_written(config: FleetConfig, paths: Iterable[Path], store: Store | None = None) -> None:
    """Publish task files this process just wrote (``add``, the API, MCP) at once, on a shared store."""
    paths = list(paths)
    if config.fleet.state == "file" or not paths:
        return  # one disk: every process reads the files themselves
    from ..store import open_store  # noqa: PLC0415

    store = store or open_store(config)
    if not store.shares_task_files:
        return
    root = Path(config.root).resolve()
    out = {}
    for path in paths:
        try:
            mtime_ns = path.stat().st_mtime_ns
        except OSError:
            continue  # removed meanwhile: nothing to publish
        shared = read_shared(str(path), (mtime_ns,))
        if shared is not None:
            out[display_source(root, path)] = shared
    if out:
        store.share_task_files(out)
