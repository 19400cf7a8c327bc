"""Which task an agent claims next: the best ready one, by priority and then run order.

A store that keeps the ready set itself (Redis, ``store.base.ReadySet``) picks and
claims in one server-side call, so a claim is one round trip whatever the queue's
size. Otherwise the agent's view keeps a heap of ready tasks, caught up from the
event feed, and claims its top by id; a stale view costs a refused claim, never a
double one. Either way the store re-checks everything atomically.
"""

from __future__ import annotations

from collections.abc import Callable

from ..store import Claim, Holder
from ..store.base import ReadySet, ready_set
from ..tasks import State, Task
from .claims import ClaimBook
from .view import QueueView


def claim_best(view: QueueView, book: ClaimBook, holder: Holder,
               warn: Callable[[str], None]) -> tuple[Task, Claim] | None:
    """Claim the best ready task; None when nothing is ready (or the fleet is paused)."""
    ready = ready_set(book.store)
    if ready is None:
        return _from_view(view, book, holder, None)
    picked = _from_store(ready, view, book, holder, warn)
    if picked is not None:
        return picked
    view.catch_up()
    if view.paused or view.peek_ready() is None:
        return None  # the store and this agent's view agree: nothing is ready
    # The view sees a ready task the store did not hand out. It may have become ready just now
    # (released, its backoff over): ask the store once more before claiming it by id.
    return _from_store(ready, view, book, holder, warn) or _from_view(view, book, holder, warn)


def _from_store(ready: ReadySet, view: QueueView, book: ClaimBook, holder: Holder,
                warn: Callable[[str], None]) -> tuple[Task, Claim] | None:
    """One ``claim_next`` call; the task's definition from this host's task files."""
    claim = book.claim_next(ready, holder)
    if claim is None:
        return None
    task = view.taskset.tasks.get(claim.task)
    if task is None or claim.task in view.taskset.blocked:
        view.rescan()  # another host's new file, not read here yet
        task = view.taskset.tasks.get(claim.task)
    if task is None or claim.task in view.taskset.blocked:
        view.files.unload([claim.task])
        view.rescan()  # drops it now, so the release below does not make it ready again
        book.release(claim, reason="its task file is not valid on this host")
        warn(f"{claim.task}: claimed from the store's ready set but its task file is not valid here; "
             "dropped it from the ready set")
        return None
    view.states[task.id] = State.RUNNING
    return task, claim


def _from_view(view: QueueView, book: ClaimBook, holder: Holder,
               warn: Callable[[str], None] | None) -> tuple[Task, Claim] | None:
    """The view's best ready task, claimed by id (skipping any the store refuses)."""
    view.catch_up()
    if view.paused:  # from the feed just read: no extra round trip per claim
        return None  # running tasks finish; nothing new starts until `coordinator resume`
    while (task := view.pop_ready()) is not None:
        claim = book.claim(task, holder)
        if claim is not None:
            view.states[task.id] = State.RUNNING
            if warn is not None:  # the store keeps a ready set, yet this task was missing from it
                warn(f"{task.id}: ready here but not in the store's ready set; claimed it by id")
            return task, claim
    return None
