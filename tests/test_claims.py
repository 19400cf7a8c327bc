"""The claim protocol on real files, in-process: leases, staleness, fencing, crash states."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from coordinator.queue.claims import ClaimBook, Holder, stale_reason
from coordinator.errors import ClaimLostError
from coordinator.store.base import Claim, FileStore, Record


class Clock:
    """An injected wall clock."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "state")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def claim_task(book: ClaimBook, task_id: str, holder: Holder, max_attempts: int = 3) -> Claim | None:
    with book.store.lock():
        return book.try_claim(task_id, max_attempts, holder)


def events(store: FileStore) -> list[dict]:
    return store.read_events(0)[0]


def test_claim_is_exclusive_and_raises_epoch(store: FileStore) -> None:
    book = ClaimBook(store, lease_s=30)
    me = Holder.current("a1")
    first = claim_task(book, "t1", me)
    assert first is not None and first.epoch == 1 and first.attempt == 1
    assert claim_task(book, "t1", Holder.current("a2")) is None
    record = store.read_record("t1")
    assert record.state == "running" and record.epoch == 1 and record.agent == "a1"
    assert [e["event"] for e in events(store)] == ["claimed"]


def test_done_task_is_never_claimed_again(store: FileStore) -> None:
    book = ClaimBook(store, lease_s=30)
    claim = claim_task(book, "t1", Holder.current("a1"))
    book.finish(claim, "done", max_attempts=3)
    assert store.read_claim("t1") is None
    assert claim_task(book, "t1", Holder.current("a2")) is None
    assert store.read_record("t1").state == "done"


def test_failure_retries_until_max_attempts(store: FileStore) -> None:
    book = ClaimBook(store, lease_s=30)
    for attempt in (1, 2):
        claim = claim_task(book, "t1", Holder.current("a1"), max_attempts=2)
        assert claim.attempt == attempt
        record = book.finish(claim, "failed", error="boom", max_attempts=2)
    assert record.state == "failed" and record.attempts == 2 and record.last_error == "boom"
    assert claim_task(book, "t1", Holder.current("a1"), max_attempts=2) is None


def test_release_does_not_count_an_attempt(store: FileStore) -> None:
    book = ClaimBook(store, lease_s=30)
    claim = claim_task(book, "t1", Holder.current("a1"))
    book.release(claim)
    record = store.read_record("t1")
    assert record.state == "pending" and record.attempts == 0
    again = claim_task(book, "t1", Holder.current("a1"))
    assert again.attempt == 1 and again.epoch == 2


def test_dead_pid_is_stale_without_waiting_for_the_lease(store: FileStore) -> None:
    clock = Clock()
    book = ClaimBook(store, lease_s=3600, clock=clock)
    holder = Holder(agent="ghost", pid=dead_pid(), pid_started_at=0.0)
    claim = claim_task(book, "t1", holder)
    assert stale_reason(claim, clock()) == "dead"
    with store.lock():
        assert book.reap_stale(lambda _: 3) == ["t1"]
    record = store.read_record("t1")
    assert record.state == "pending" and record.attempts == 1
    new = claim_task(book, "t1", Holder.current("a2"))
    assert new.epoch == 2 and new.attempt == 2
    kinds = [e["event"] for e in events(store)]
    assert kinds == ["claimed", "reclaimed", "claimed"]


def test_reused_pid_with_other_start_time_is_dead(store: FileStore) -> None:
    clock = Clock()
    book = ClaimBook(store, lease_s=3600, clock=clock)
    me = psutil.Process(os.getpid())
    impostor = Holder(agent="old", pid=me.pid, pid_started_at=me.create_time() - 120.0)
    claim = claim_task(book, "t1", impostor)
    assert stale_reason(claim, clock()) == "dead"
    genuine = Holder.current("live")
    assert stale_reason(claim_task(book, "t2", genuine), clock()) is None


def test_lease_expiry_and_fencing(store: FileStore) -> None:
    clock = Clock()
    book = ClaimBook(store, lease_s=10, clock=clock)
    old = claim_task(book, "t1", Holder.current("sleepy"))
    clock.now += 5
    book.renew(old)
    clock.now += 9
    assert stale_reason(store.read_claim("t1"), clock()) is None
    clock.now += 2
    with store.lock():
        assert book.reap_stale(lambda _: 3) == ["t1"]
    new = claim_task(book, "t1", Holder.current("fresh"))
    assert new.epoch == old.epoch + 1
    for action in (lambda: book.renew(old), lambda: book.finish(old, "done", max_attempts=3),
                   lambda: book.finish(old, "failed", max_attempts=3), lambda: book.release(old)):
        with pytest.raises(ClaimLostError):
            action()
    fenced = [e for e in events(store) if e["event"] == "fenced"]
    assert [e["action"] for e in fenced] == ["renew", "done", "fail", "release"]
    assert all(e["agent"] == "sleepy" and e["epoch"] == old.epoch for e in fenced)
    book.finish(new, "done", max_attempts=3)
    assert store.read_record("t1").state == "done"


def test_orphan_claim_from_a_crash_is_dropped_uncounted(store: FileStore) -> None:
    """Crash after writing the claim file but before the record."""
    book = ClaimBook(store, lease_s=30)
    store.write_record(Record(id="t1", state="pending", epoch=3, attempts=1))
    store.write_claim(Claim(task="t1", agent="ghost", pid=dead_pid(), pid_started_at=0.0, host=Holder.current("x").host,
                            claimed_at=0, renewed_at=0, lease_s=30, epoch=4, attempt=2))
    claim = claim_task(book, "t1", Holder.current("a1"))
    assert claim is not None and claim.epoch == 5 and claim.attempt == 2
    assert store.read_record("t1").attempts == 1


def test_claim_left_on_finished_record_is_removed(store: FileStore) -> None:
    """Crash after writing the done record but before deleting the claim."""
    book = ClaimBook(store, lease_s=30)
    store.write_record(Record(id="t1", state="done", epoch=2, attempts=1))
    store.write_claim(Claim(task="t1", agent="ghost", pid=dead_pid(), pid_started_at=0.0,
                            host=Holder.current("x").host, claimed_at=0, renewed_at=0, lease_s=30, epoch=2,
                            attempt=1))
    with store.lock():
        book.reap_stale(lambda _: 3)
    assert store.read_claim("t1") is None
    assert store.read_record("t1").state == "done" and store.read_record("t1").attempts == 1


def test_running_record_without_claim_is_recovered(store: FileStore) -> None:
    book = ClaimBook(store, lease_s=30)
    store.write_record(Record(id="t1", state="running", epoch=1, attempts=0))
    with store.lock():
        assert book.recover_unclaimed(["t1"]) == ["t1"]
    assert store.read_record("t1").state == "pending"


def test_reclaim_kills_the_runner_left_behind(store: FileStore) -> None:
    clock = Clock()
    book = ClaimBook(store, lease_s=1, clock=clock)
    runner = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        claim = claim_task(book, "t1", Holder.current("a1"))
        book.renew(claim, child_pid=runner.pid)
        clock.now += 5
        with store.lock():
            book.reap_stale(lambda _: 3)
        assert runner.wait(timeout=10) == -9
    finally:
        runner.kill()


def test_state_files_are_json_and_atomic(store: FileStore) -> None:
    book = ClaimBook(store, lease_s=30)
    claim_task(book, "t1", Holder.current("a1"))
    assert json.loads((store.claims_dir / "t1.json").read_text())["epoch"] == 1
    leftovers = [p for p in store.root.rglob("*.tmp")]
    assert leftovers == []
