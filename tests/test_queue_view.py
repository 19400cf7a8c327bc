"""An agent's view of the queue: the ready heap's order, and keeping it current from the event feed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordinator.clock import ManualClock
from coordinator.config import load_config
from coordinator.queue.claims import current_holder
from coordinator.queue.view import RESCAN_EVERY_S, QueueCounts, QueueView
from coordinator.store.file import FileStore
from coordinator.store.memory import MemoryStore

# Task files get mtimes well in the past, so "first seen" is what the test says.
BASE_NS = 1_600_000_000 * 10**9


class CountingStore(MemoryStore):
    """A memory store that notes how many events each read_events call served."""

    def __init__(self) -> None:
        super().__init__()
        self.served: list[int] = []

    def read_events(self, cursor: int = 0) -> tuple[list[dict[str, Any]], int]:
        events, end = super().read_events(cursor)
        self.served.append(len(events))
        return events, end


@pytest.fixture
def fleet(make_fleet: Callable[..., Path]) -> Callable[..., QueueView]:
    """``fleet({"id": (priority, seen_offset_s, depends_on)}, store=...)``: task files on disk and a resynced view."""

    def build(tasks: dict[str, tuple[int, int, list[str]]], store: Any = None,
              clock: ManualClock | None = None) -> QueueView:
        files = {}
        for task_id, (priority, _, deps) in tasks.items():
            files[f"{task_id}.toml"] = f'prompt = "work on {task_id}"\npriority = {priority}\n' + (
                f"depends_on = {deps!r}\n".replace("'", '"') if deps else "")
        root = make_fleet(tasks=files)
        for task_id, (_, seen_s, _) in tasks.items():
            stamp = BASE_NS + seen_s * 10**9
            os.utime(root / "tasks" / f"{task_id}.toml", ns=(stamp, stamp))
        config = load_config(root)
        view = QueueView(config, store if store is not None else MemoryStore(), clock=clock or ManualClock())
        view.resync()
        assert not view.taskset.invalid, view.taskset.invalid
        return view

    return build


def pop_all(view: QueueView) -> list[str]:
    out = []
    while (task := view.pop_ready()) is not None:
        out.append(task.id)
    return out


def run_to(view: QueueView, task_id: str, *, ok: bool, max_attempts: int = 3) -> None:
    """Another agent claims ``task_id`` and finishes it, through the store alone."""
    claim = view.store.claim(task_id, current_holder("other"), lease_s=30)
    assert claim is not None
    view.store.finish(claim, ok=ok, max_attempts=max_attempts)


def test_ready_heap_order_is_priority_then_first_seen_then_id(fleet) -> None:
    view = fleet({
        "late-normal": (2, 30, []),
        "early-normal": (2, 10, []),
        "same-b": (2, 20, []),
        "same-a": (2, 20, []),
        "low": (3, 0, []),
        "critical": (0, 40, []),
        "high": (1, 50, []),
    })
    assert pop_all(view) == ["critical", "high", "early-normal", "same-a", "same-b", "late-normal", "low"]


def test_ready_heap_order_on_a_file_store(fleet, tmp_path: Path) -> None:
    view = fleet({"b": (2, 1, []), "a": (2, 2, []), "c": (0, 3, [])}, store=FileStore(tmp_path / "elsewhere"))
    assert pop_all(view) == ["c", "b", "a"]


def test_dependents_become_ready_when_the_done_event_is_caught_up(fleet) -> None:
    view = fleet({"base": (2, 0, []), "child": (0, 1, ["base"]), "grandchild": (0, 2, ["child"])})
    assert pop_all(view) == ["base"]
    run_to(view, "base", ok=True)
    assert view.pop_ready() is None  # not caught up yet: the view knows nothing new
    view.catch_up()
    assert pop_all(view) == ["child"]
    run_to(view, "child", ok=True)
    view.catch_up()
    assert pop_all(view) == ["grandchild"]


def test_a_retried_attempt_comes_back_to_the_heap(fleet) -> None:
    view = fleet({"flaky": (2, 0, []), "child": (2, 1, ["flaky"])})
    assert pop_all(view) == ["flaky"]
    run_to(view, "flaky", ok=False)  # pending again, for another attempt
    view.catch_up()
    assert pop_all(view) == ["flaky"]


def test_catch_up_applies_only_new_events(fleet) -> None:
    store = CountingStore()
    view = fleet({"a": (2, 0, []), "b": (2, 1, [])}, store=store)
    claim = store.claim("a", current_holder("other"), lease_s=30)
    store.append_event("agent_started", agent="other", pid=1)  # a note: no state
    store.finish(claim, ok=True, max_attempts=3)
    store.served.clear()
    view.catch_up()
    assert store.served == [3] and view.states["a"] == "done"
    view.catch_up()
    assert store.served == [3, 0]
    store.claim("b", current_holder("other"), lease_s=30)
    view.catch_up()
    assert store.served == [3, 0, 1] and view.states["b"] == "running"
    assert view.cursor == store.event_cursor()


def test_resync_starts_after_the_events_it_already_read(fleet) -> None:
    store = CountingStore()
    view = fleet({"a": (2, 0, [])}, store=store)
    run_to(view, "a", ok=True)
    view.resync()
    assert view.states["a"] == "done" and view.cursor == store.event_cursor()
    store.served.clear()
    view.catch_up()
    assert store.served == [0]


def test_a_failed_dependency_blocks_with_the_reason(fleet) -> None:
    view = fleet({"dep": (2, 0, []), "child": (2, 1, ["dep"]), "grandchild": (2, 2, ["child"]),
                  "free": (2, 3, [])})
    assert view.blocked_reason("child") is None
    run_to(view, "dep", ok=False, max_attempts=1)
    view.catch_up()
    assert view.blocked_reason("child") == "dependency 'dep' failed"
    assert view.blocked_reason("grandchild") == "dependency 'child' is blocked"
    assert not view.is_ready("child")
    assert view.counts() == QueueCounts(ready=1, running=0, waiting=0)  # child and grandchild are neither
    assert pop_all(view) == ["free"]


def test_a_cancelled_dependency_blocks_too(fleet) -> None:
    view = fleet({"dep": (2, 0, []), "child": (2, 1, ["dep"])})
    view.store.cancel("dep")
    view.catch_up()
    assert view.blocked_reason("child") == "dependency 'dep' cancelled"


def test_an_unknown_dependency_is_blocked_from_the_files(fleet) -> None:
    view = fleet({"orphan": (2, 0, ["missing"]), "ok": (2, 1, [])})
    assert "missing" in view.blocked_reason("orphan")
    assert pop_all(view) == ["ok"]


def test_counts(fleet) -> None:
    view = fleet({"ready1": (2, 0, []), "ready2": (2, 1, []), "busy": (2, 2, []), "finished": (2, 3, []),
                  "waits": (2, 4, ["busy"]), "waits-too": (2, 5, ["waits"])})
    assert view.counts() == QueueCounts(ready=4, running=0, waiting=2)
    view.store.claim("busy", current_holder("other"), lease_s=30)
    run_to(view, "finished", ok=True)
    assert view.counts() == QueueCounts(ready=4, running=0, waiting=2)  # the view has not caught up
    view.catch_up()
    assert view.counts() == QueueCounts(ready=2, running=1, waiting=2)


def test_a_stale_heap_entry_is_skipped_after_catch_up(fleet) -> None:
    view = fleet({"first": (0, 0, []), "second": (1, 1, [])})
    behind = QueueView(view.config, view.store, clock=ManualClock())
    behind.resync()
    view.store.claim("first", current_holder("someone-else"), lease_s=30)
    # A view that has not caught up still offers "first"; the store refuses the claim.
    stale = behind.pop_ready()
    assert stale is not None and stale.id == "first"
    assert view.store.claim(stale.id, current_holder("me"), lease_s=30) is None
    view.catch_up()
    assert view.pop_ready().id == "second"
    assert view.pop_ready() is None


def test_a_task_file_dropped_later_is_picked_up_at_the_next_rescan(fleet) -> None:
    clock = ManualClock()
    view = fleet({"a": (2, 0, [])}, clock=clock)
    (view.config.tasks_dir / "new.toml").write_text('prompt = "late arrival"\npriority = 0\n')
    view.rescan_if_due()
    assert "new" not in view.taskset.tasks
    clock.advance(RESCAN_EVERY_S)
    view.rescan_if_due()
    assert pop_all(view) == ["new", "a"]
