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

On a store that keeps the ready set itself (``store.base.ReadySet``) the same
refresh loads each valid task's definition (priority, run order, dependencies)
into it, sending only what changed since this process last did; a task that is
no longer valid (its file broke, a dependency cycle) is dropped from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import FleetConfig
from ..store import Store
from ..store.base import ReadySet, ready_set
from ..tasks.graph import TaskSet
from ..tasks.model import Task
from ..tasks.index import TaskIndex, display_source


class SharedTaskFiles:
    """A TaskIndex kept in step with the store's shared task files."""

    def __init__(self, store: Store, index: TaskIndex, *, loads: bool = True) -> None:
        self.store = store
        self.index = index
        self.ready = ready_set(store) if loads else None  # reports read the files; claimers and enqueuers load them
        self.published: dict[str, tuple[Any, ...]] = {}  # source → the stat key it was published at
        self.version: int | None = None
        self.loaded: dict[str, tuple[Any, ...]] = {}  # task id → the definition this process loaded
        self._loaded_from: TaskSet | None = None

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
        if self.ready is not None and taskset is not self._loaded_from:
            self._load(self.ready, taskset)
        return taskset

    def load_sources(self, sources: set[str]) -> None:
        """Load only the tasks of ``sources`` (files this process just wrote and published) into the ready set."""
        if self.ready is None:
            return
        version, files = self.store.read_task_files(None)  # other hosts' files: dependencies, cycles
        self.version, self.index.shared = version, files or {}
        taskset = self.index.refresh()
        tasks = [task for task in taskset.tasks.values() if task.source in sources and task.id not in taskset.blocked]
        if tasks:
            self.ready.load_ready(tasks, [], version=version)

    def unload(self, task_ids: list[str]) -> None:
        """Drop tasks this host finds invalid from the store's ready set at the next refresh (a claim found one)."""
        for task_id in task_ids:
            self.loaded[task_id] = ("unloading",)  # sent as gone unless valid after all
        self._loaded_from = None

    def _load(self, ready: ReadySet, taskset: TaskSet) -> None:
        """Load the definitions that changed into the store's ready set; drop those no longer valid."""
        want = {task_id: definition(task) for task_id, task in taskset.tasks.items() if task_id not in taskset.blocked}
        changed = [taskset.tasks[task_id] for task_id, key in want.items() if self.loaded.get(task_id) != key]
        gone = [task_id for task_id in self.loaded if task_id not in want]
        if changed or gone:
            dropped = ready.load_ready(changed, gone, version=self.version or 0)
            self.loaded.update((task.id, want[task.id]) for task in changed)
            if not dropped:
                return  # the files moved meanwhile: the next refresh tries again
            for task_id in gone:
                del self.loaded[task_id]
        self._loaded_from = taskset

    def _publish(self) -> None:
        """Publish the files of this disk that are new or changed since this process last did."""
        fresh = {source: (path, key) for source, (path, key) in self.index.local.items()
                 if self.published.get(source) != key}
        out = {source: shared for source, (path, key) in fresh.items() if (shared := read_shared(path, key))}
        if out:
            self.store.share_task_files(out)
        self.published.update({source: key for source, (_, key) in fresh.items()})


def definition(task: Task) -> tuple[Any, ...]:
    """What of a task the ready set keeps: its run order (priority first) and its dependencies."""
    return task.sort_key(), tuple(task.depends_on)


def read_shared(path: str, key: tuple[Any, ...]) -> tuple[str, int, str] | None:
    """(sha256, mtime_ns, text) of a task file, or None when it cannot be read (it is invalid here anyway)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    mtime_ns = key[0] if isinstance(key[0], int) else 0
    return hashlib.sha256(data).hexdigest(), mtime_ns, data.decode("utf-8", errors="replace")


def publish_written(config: FleetConfig, paths: Iterable[Path], store: Store | None = None, *,
                    load: bool = False) -> None:
    """Publish task files this process just wrote (``add``, the API, MCP) at once, on a shared store.

    ``load`` also loads their definitions into the store's ready set (``add``: a one-shot
    process; the API and MCP load through the view they keep, on their rescan).
    """
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
    if load and out:  # claimable at once, not at the agents' next rescan
        from ..tasks.cache import open_index  # noqa: PLC0415

        SharedTaskFiles(store, open_index(config)).load_sources(set(out))
