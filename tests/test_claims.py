"""The claim book's policy on real files and real processes: when a claim is stale, what a takeover kills.

The store's own operations (exclusivity, epochs, outcomes, fencing, crash
leftovers) are the store contract's (``tests/store_contract.py``). Here: a dead
pid, a reused pid, an expired lease, a denied look at a process, and the runner
a stale claim leaves behind. Leases compare against ``store.now()``, the
``ManualClock``'s wall time, so no test waits for one to run out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from coordinator import liveness
from coordinator.clock import ManualClock
from coordinator.errors import ClaimLostError
from coordinator.liveness import HOST, process_is_alive
from coordinator.queue.claims import (
    ClaimBook,
    current_holder,
    kill_runner,
    stale_reason,
)
from coordinator.store.base import Claim, Holder
from coordinator.store.file import FileStore
from coordinator.tasks import Task

# A runner that does nothing until it is killed (it blocks on a signal, it does not sleep).
BLOCKING_CHILD = [sys.executable, "-c", "import signal; signal.pause()"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> FileStore:
    return FileStore(tmp_path / "state", clock=clock)


@pytest.fixture
def runner() -> Iterator[subprocess.Popen]:
    """A real process in its own group, standing for a task's runner."""
    proc = subprocess.Popen(BLOCKING_CHILD, start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def assert_not_killed(proc: subprocess.Popen) -> None:
    """The process was still running: it dies of our SIGTERM now, not of an earlier SIGKILL."""
    proc.terminate()
    assert proc.wait(timeout=10) == -signal.SIGTERM


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def task(task_id: str = "t1") -> Task:
    return Task(id=task_id, prompt="do it")


def claim_task(book: ClaimBook, task_id: str, holder: Holder) -> Claim | None:
    return book.claim(task(task_id), holder)


def events(store: FileStore) -> list[dict]:
    return store.read_events(0)[0]


def test_dead_pid_is_stale_without_waiting_for_the_lease(store: FileStore) -> None:
    book = ClaimBook(store, lease_s=3600)
    holder = Holder(agent="ghost", pid=dead_pid(), pid_started_at=0.0, host=HOST)
    claim = claim_task(book, "t1", holder)
    assert stale_reason(claim, store.now()) == "dead"
    assert book.reap_stale(lambda _: 3) == ["t1"]
    record = store.read_record("t1")
    assert record.state == "pending" and record.attempts == 1
    new = claim_task(book, "t1", current_holder("a2"))
    assert new.epoch == 2 and new.attempt == 2
    kinds = [e["event"] for e in events(store)]
    assert kinds == ["claimed", "reclaimed", "claimed"]
    assert events(store)[1]["reason"] == "dead"


def test_reused_pid_with_other_start_time_is_dead(store: FileStore) -> None:
    book = ClaimBook(store, lease_s=3600)
    me = psutil.Process(os.getpid())
    impostor = Holder(agent="old", pid=me.pid, pid_started_at=me.create_time() - 120.0, host=HOST)
    claim = claim_task(book, "t1", impostor)
    assert stale_reason(claim, store.now()) == "dead"
    genuine = current_holder("live")
    assert stale_reason(claim_task(book, "t2", genuine), store.now()) is None
    assert book.reap_stale(lambda _: 3) == ["t1"]
    assert store.read_claim("t2") is not None


def test_a_dead_pid_on_another_host_proves_nothing_until_the_lease_expires(store: FileStore,
                                                                           clock: ManualClock) -> None:
    book = ClaimBook(store, lease_s=10)
    remote = Holder(agent="far", pid=dead_pid(), pid_started_at=0.0, host=HOST + "-elsewhere")
    claim = claim_task(book, "t1", remote)
    assert stale_reason(claim, store.now()) is None
    assert book.reap_stale(lambda _: 3) == [] and book.release_dead("stopping") == []
    clock.advance(11)
    assert stale_reason(claim, store.now()) == "expired"
    assert book.reap_stale(lambda _: 3) == ["t1"]


def test_lease_expiry_and_fencing(store: FileStore, clock: ManualClock) -> None:
    book = ClaimBook(store, lease_s=10)
    old = claim_task(book, "t1", current_holder("sleepy"))
    clock.advance(5)
    book.renew(old)
    clock.advance(9)
    assert stale_reason(store.read_claim("t1"), store.now()) is None
    clock.advance(2)
    assert book.reap_stale(lambda _: 3) == ["t1"]
    new = claim_task(book, "t1", current_holder("fresh"))
    assert new.epoch == old.epoch + 1
    for action in (lambda: book.renew(old), lambda: book.finish(old, ok=True, max_attempts=3),
                   lambda: book.finish(old, ok=False, max_attempts=3), lambda: book.release(old)):
        with pytest.raises(ClaimLostError):
            action()
    fenced = [e for e in events(store) if e["event"] == "fenced"]
    assert [e["action"] for e in fenced] == ["renew", "done", "fail", "release"]
    assert all(e["agent"] == "sleepy" and e["epoch"] == old.epoch for e in fenced)
    book.finish(new, ok=True, max_attempts=3)
    assert store.read_record("t1").state == "done"


def test_release_dead_gives_back_only_dead_holders_uncounted(store: FileStore) -> None:
    book = ClaimBook(store, lease_s=30)
    claim_task(book, "t1", Holder(agent="ghost", pid=dead_pid(), pid_started_at=0.0, host=HOST))
    claim_task(book, "t2", current_holder("alive"))
    assert book.release_dead("fleet stopping") == ["t1"]
    record = store.read_record("t1")
    assert record.state == "pending" and record.attempts == 0
    assert store.read_claim("t1") is None and store.read_claim("t2") is not None
    assert events(store)[-1]["event"] == "released" and events(store)[-1]["reason"] == "fleet stopping"


def test_reclaim_kills_the_runner_left_behind(store: FileStore, clock: ManualClock,
                                              runner: subprocess.Popen) -> None:
    book = ClaimBook(store, lease_s=1)
    claim = claim_task(book, "t1", current_holder("a1"))
    book.renew(claim, child_pid=runner.pid)
    assert store.read_claim("t1").child_started_at == psutil.Process(runner.pid).create_time()
    clock.advance(5)
    assert book.reap_stale(lambda _: 3) == ["t1"]
    assert runner.wait(timeout=10) == -signal.SIGTERM  # asked first; SIGKILL only for what ignores it


def test_a_runner_whose_identity_does_not_match_is_not_killed(store: FileStore, clock: ManualClock,
                                                              runner: subprocess.Popen) -> None:
    """The noted runner's pid now belongs to another process (another start time): hands off."""
    book = ClaimBook(store, lease_s=1)
    claim = claim_task(book, "t1", current_holder("a1"))
    store.renew(claim, child_pid=runner.pid, child_started_at=psutil.Process(runner.pid).create_time() - 60)
    clock.advance(5)
    assert book.reap_stale(lambda _: 3) == ["t1"]
    kill_runner(claim)
    assert_not_killed(runner)


# -- AccessDenied: the process exists and we may not look; that proves nothing -------


def deny_access_to(monkeypatch: pytest.MonkeyPatch, *pids: int) -> None:
    """Make psutil raise AccessDenied for ``pids``, as it does for another user's process under hidepid."""
    denied = set(pids)
    for name in ("create_time", "status"):
        real = getattr(psutil.Process, name)

        def guarded(self: psutil.Process, *args: object, _real=real, _name=name, **kwargs: object) -> object:
            if self.pid in denied:
                raise psutil.AccessDenied(self.pid, _name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(psutil.Process, name, guarded)


def test_process_is_alive_counts_access_denied_as_alive(monkeypatch: pytest.MonkeyPatch,
                                                        runner: subprocess.Popen) -> None:
    started = psutil.Process(runner.pid).create_time()
    deny_access_to(monkeypatch, runner.pid)
    with pytest.raises(psutil.AccessDenied):
        psutil.Process(runner.pid).create_time()  # the injection works
    assert process_is_alive(runner.pid) is True
    assert process_is_alive(runner.pid, started) is True
    assert process_is_alive(runner.pid, started - 3600) is True  # another start time cannot be read either
    assert liveness.start_time(runner.pid) is None


def test_a_holder_we_may_not_inspect_is_not_reaped_and_its_runner_lives(
        store: FileStore, monkeypatch: pytest.MonkeyPatch, runner: subprocess.Popen) -> None:
    holder_proc = subprocess.Popen(BLOCKING_CHILD, start_new_session=True)
    try:
        book = ClaimBook(store, lease_s=30)
        holder = Holder(agent="other-user", pid=holder_proc.pid,
                        pid_started_at=psutil.Process(holder_proc.pid).create_time(), host=HOST)
        claim = claim_task(book, "t1", holder)
        book.renew(claim, child_pid=runner.pid)
        deny_access_to(monkeypatch, holder_proc.pid)  # the runner stays visible, so a wrong verdict would kill it
        assert stale_reason(store.read_claim("t1"), store.now()) is None
        assert book.reap_stale(lambda _: 3) == []
        assert book.release_dead("fleet stopping") == []
        assert store.read_claim("t1") == claim and store.read_record("t1").state == "running"
        assert_not_killed(runner)
        assert_not_killed(holder_proc)
    finally:
        holder_proc.kill()
        holder_proc.wait(timeout=10)


def test_a_runner_we_may_not_inspect_is_not_killed_on_takeover(
        store: FileStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, runner: subprocess.Popen) -> None:
    """The lease expired, so the task is reclaimed; but a kill needs proof of identity, and a denied look is none."""
    book = ClaimBook(store, lease_s=1)
    claim = claim_task(book, "t1", current_holder("a1"))
    book.renew(claim, child_pid=runner.pid)
    deny_access_to(monkeypatch, runner.pid)
    clock.advance(5)
    assert book.reap_stale(lambda _: 3) == ["t1"]
    assert_not_killed(runner)
