"""The store contract, as one suite every store must pass (huey's ``StorageTests`` pattern).

``StoreContract`` holds the tests; a concrete class mixes it in and provides
``make_store(clock)``, returning a fresh, empty store that measures leases on
``clock`` (``tests/test_store.py``: ``TestFileStore``, ``TestMemoryStore``). A new
store passes the same tests. Time is a ``ManualClock``; holders are real
processes (this one, alive; or a pid that has exited), because a store's
staleness is judged by the claim book's real liveness rule.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.clock import ManualClock
from coordinator.errors import ClaimLostError, TaskError
from coordinator.liveness import HOST
from coordinator.queue.claims import ClaimBook, current_holder
from coordinator.store.base import Claim, Record
from coordinator.store.locked import LockedStore
from coordinator.tasks import Task
from coordinator.tasks.model import TRANSITIONS, State

STORED_STATES = (State.PENDING, State.RUNNING, State.DONE, State.FAILED, State.CANCELLED)
LEASE_S = 30.0


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _task(task_id: str) -> Task:
    """A minimal Task for the claim book (which reads only its id)."""
    return Task(id=task_id, prompt="do it")


class StoreContract:
    """Every operation, read and feed rule of ``coordinator.store.base.Store``."""

    store: LockedStore
    clock: ManualClock
    tmp_path: Path

    def make_store(self, clock: ManualClock) -> LockedStore:
        """A fresh, empty store on ``clock``; supplied by each concrete test class."""
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def _fresh_store(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clock = ManualClock()
        self.store = self.make_store(self.clock)

    # -- helpers --------------------------------------------------------------

    def claim(self, task_id: str = "t1", agent: str = "a1", *, lease_s: float = LEASE_S) -> Claim:
        claim = self.store.claim(task_id, current_holder(agent), lease_s=lease_s)
        assert claim is not None, f"{task_id} should be claimable"
        return claim

    def record(self, task_id: str = "t1") -> Record:
        record = self.store.read_record(task_id)
        assert record is not None
        return record

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.store.read_events(0)[0]]

    def put_in(self, state: State, task_id: str = "t1") -> Claim | None:
        """Drive a task into a stored state through the operations alone; the live claim, if running."""
        if state == State.PENDING:
            self.store.release(self.claim(task_id), reason="setup")
        elif state == State.RUNNING:
            return self.claim(task_id)
        elif state == State.DONE:
            self.store.finish(self.claim(task_id), ok=True, max_attempts=3)
        elif state == State.FAILED:
            self.store.finish(self.claim(task_id), ok=False, error="boom", max_attempts=1)
        elif state == State.CANCELLED:
            self.store.cancel(task_id)
        assert self.record(task_id).state == state
        return None

    def snapshot(self, task_id: str = "t1") -> tuple:
        """Everything the store holds about one task, plus the feed's end."""
        record, claim = self.store.read_record(task_id), self.store.read_claim(task_id)
        return (record.to_json() if record else None, claim.to_json() if claim else None,
                self.store.event_cursor())

    # -- every legal transition, and illegal ones refused ----------------------

    def transition_drivers(self) -> dict[tuple[str, State, State], Callable[[], None]]:
        """One way to make each (operation, from, to) of TRANSITIONS happen, starting from scratch."""
        s = self.store

        def finish(ok: bool, max_attempts: int) -> Callable[[], None]:
            return lambda: s.finish(self.claim(), ok=ok, max_attempts=max_attempts, error=None if ok else "x")

        def reclaim(max_attempts: int) -> Callable[[], None]:
            return lambda: s.reclaim(self.claim(), reason="dead", max_attempts=max_attempts)

        def retry_from(state: State) -> Callable[[], None]:
            return lambda: (self.put_in(state), s.retry("t1"))

        drivers = {
            ("claim", State.PENDING, State.RUNNING): lambda: self.claim(),
            ("finish", State.RUNNING, State.DONE): finish(True, 3),
            ("finish", State.RUNNING, State.PENDING): finish(False, 3),
            ("finish", State.RUNNING, State.FAILED): finish(False, 1),
            ("release", State.RUNNING, State.PENDING): lambda: s.release(self.claim(), reason="stopping"),
            ("land", State.RUNNING, State.DONE): lambda: s.land(self.claim(), lambda: "c0ffee"),
            ("requeue", State.RUNNING, State.PENDING): lambda: s.requeue(
                self.claim(), kind="conflict", reason="x", max_conflicts=1),
            ("requeue", State.RUNNING, State.FAILED): lambda: s.requeue(
                self.claim(), kind="conflict", reason="x", max_conflicts=0),
            ("reclaim", State.RUNNING, State.PENDING): reclaim(3),
            ("reclaim", State.RUNNING, State.FAILED): reclaim(1),
            ("repair", State.RUNNING, State.PENDING): lambda: (
                s.plant(record=Record(id="t1", state=State.RUNNING, epoch=1)), s.repair(["t1"])),
            ("cancel", State.PENDING, State.CANCELLED): lambda: s.cancel("t1"),
            ("cancel", State.RUNNING, State.CANCELLED): lambda: (self.claim(), s.cancel("t1")),
        }
        for state in TRANSITIONS["retry"]:
            drivers[("retry", state, State.PENDING)] = retry_from(state)
        return drivers

    def test_drivers_cover_the_transition_table(self) -> None:
        table = {(op, src, dst) for op, moves in TRANSITIONS.items() for src, dsts in moves.items() for dst in dsts}
        assert set(self.transition_drivers()) == table

    @pytest.mark.parametrize("move", sorted((op, str(src), str(dst)) for op, moves in TRANSITIONS.items()
                                            for src, dsts in moves.items() for dst in dsts))
    def test_every_legal_transition(self, move: tuple[str, str, str]) -> None:
        op, _, target = move
        self.transition_drivers()[(op, State(move[1]), State(target))]()
        record = self.record()
        assert record.state == State(target)
        events = self.store.read_events(0)[0]
        assert events[-1]["state"] == target and events[-1]["task"] == "t1"

    @pytest.mark.parametrize("state", [s for s in STORED_STATES if s not in TRANSITIONS["cancel"]])
    def test_cancel_refuses_a_finished_task(self, state: State) -> None:
        self.put_in(state)
        before = self.snapshot()
        with pytest.raises(TaskError, match="already"):
            self.store.cancel("t1")
        assert self.snapshot() == before

    @pytest.mark.parametrize("state", [s for s in STORED_STATES if s not in TRANSITIONS["retry"]])
    def test_retry_refuses_an_unfinished_task(self, state: State) -> None:
        self.put_in(state)
        before = self.snapshot()
        with pytest.raises(TaskError, match="only failed, done or cancelled"):
            self.store.retry("t1")
        assert self.snapshot() == before

    def test_retry_of_a_task_never_touched_is_refused(self) -> None:
        with pytest.raises(TaskError):
            self.store.retry("never")
        assert self.store.read_record("never") is None and self.store.event_cursor() == 0

    @pytest.mark.parametrize("state", [s for s in STORED_STATES if s not in TRANSITIONS["claim"]])
    def test_claim_of_a_task_not_pending_is_none(self, state: State) -> None:
        self.put_in(state)
        before = self.snapshot()
        assert self.store.claim("t1", current_holder("a2"), lease_s=LEASE_S) is None
        assert self.snapshot() == before

    @pytest.mark.parametrize("state", [s for s in STORED_STATES if s not in TRANSITIONS["repair"]])
    def test_repair_leaves_tasks_not_running_alone(self, state: State) -> None:
        self.put_in(state)
        before = self.snapshot()
        assert self.store.repair(["t1", "never"]) == []
        assert self.snapshot() == before

    def test_retry_clears_attempts_and_error_but_keeps_the_epoch(self) -> None:
        for _ in range(2):
            self.store.finish(self.claim(), ok=False, error="boom", max_attempts=2)
        assert self.record().state == State.FAILED and self.record().epoch == 2
        record = self.store.retry("t1")
        assert (record.state, record.attempts, record.last_error, record.epoch) == (State.PENDING, 0, None, 2)
        again = self.claim()
        assert again.epoch == 3 and again.attempt == 1

    def test_cancel_of_a_running_task_returns_its_claim_and_fences_the_holder(self) -> None:
        claim = self.claim()
        record, had = self.store.cancel("t1")
        assert record.state == State.CANCELLED and had == claim
        assert self.store.read_claim("t1") is None
        with pytest.raises(ClaimLostError):
            self.store.finish(claim, ok=True, max_attempts=3)
        assert self.record().state == State.CANCELLED
        assert self.store.read_events(0)[0][-1]["event"] == "fenced"

    def test_cancel_of_a_task_never_touched(self) -> None:
        record, had = self.store.cancel("t9")
        assert record.state == State.CANCELLED and had is None
        assert self.store.claim("t9", current_holder("a1"), lease_s=LEASE_S) is None

    # -- claims: exclusivity, epochs, outcomes --------------------------------

    def test_claim_is_exclusive_and_raises_epoch(self) -> None:
        first = self.store.claim("t1", current_holder("a1"), lease_s=LEASE_S)
        assert first is not None and first.epoch == 1 and first.attempt == 1
        assert self.store.claim("t1", current_holder("a2"), lease_s=LEASE_S) is None
        record = self.record()
        assert record.state == "running" and record.epoch == 1 and record.agent == "a1"
        assert self.kinds() == ["claimed"]
        assert self.store.read_claim("t1") == first
        assert first.claimed_at == first.renewed_at == self.clock.wall() and first.lease_s == LEASE_S

    def test_every_takeover_raises_the_epoch(self) -> None:
        epochs = []
        claim = self.claim(agent="a1")
        epochs.append(claim.epoch)
        self.store.release(claim, reason="stopping")
        claim = self.claim(agent="a2")
        epochs.append(claim.epoch)
        self.store.reclaim(claim, reason="dead", max_attempts=3)
        claim = self.claim(agent="a3")
        epochs.append(claim.epoch)
        self.store.finish(claim, ok=False, max_attempts=3)
        epochs.append(self.claim(agent="a4").epoch)
        assert epochs == [1, 2, 3, 4]
        assert self.record().epoch == 4

    def test_claims_on_different_tasks_are_independent_and_listed_in_id_order(self) -> None:
        for task_id in ("t3", "t1", "t2"):
            self.claim(task_id, agent=f"a-{task_id}")
        assert [c.task for c in self.store.list_claims()] == ["t1", "t2", "t3"]
        assert [c.agent for c in self.store.list_claims()] == ["a-t1", "a-t2", "a-t3"]
        assert sorted(r.id for r in self.store.iter_records()) == ["t1", "t2", "t3"]

    def test_done_task_is_never_claimed_again(self) -> None:
        claim = self.claim()
        self.clock.advance(4)
        record = self.store.finish(claim, ok=True, max_attempts=3, usage={"requests": 1},
                                   extra={"file_hash": "abc", "run_ms": 5})
        assert self.store.read_claim("t1") is None
        assert self.store.claim("t1", current_holder("a2"), lease_s=LEASE_S) is None
        assert self.record().state == "done"
        assert record == self.record()
        assert (record.attempts, record.finished_at, record.usage, record.file_hash) == (
            1, self.clock.wall(), {"requests": 1}, "abc")
        assert record.history == [{"attempt": 1, "agent": "a1", "epoch": 1, "started_at": claim.claimed_at,
                                   "finished_at": self.clock.wall(), "outcome": "done", "error": None,
                                   "file_hash": "abc", "run_ms": 5}]

    def test_failure_retries_until_max_attempts(self) -> None:
        for attempt in (1, 2):
            claim = self.claim()
            assert claim.attempt == attempt
            record = self.store.finish(claim, ok=False, error="boom", max_attempts=2)
            assert record.state == (State.PENDING if attempt == 1 else State.FAILED)
        assert record.state == "failed" and record.attempts == 2 and record.last_error == "boom"
        assert self.store.claim("t1", current_holder("a1"), lease_s=LEASE_S) is None
        assert [h["outcome"] for h in record.history] == ["failed", "failed"]
        assert self.kinds() == ["claimed", "retrying", "claimed", "failed"]

    def test_release_does_not_count_an_attempt(self) -> None:
        claim = self.claim()
        self.store.release(claim, reason="stopping")
        record = self.record()
        assert record.state == "pending" and record.attempts == 0
        assert self.store.read_claim("t1") is None
        again = self.claim()
        assert again.attempt == 1 and again.epoch == 2

    def test_renew_extends_the_lease_and_notes_the_runner(self) -> None:
        claim = self.claim()
        self.clock.advance(7)
        renewed = self.store.renew(claim, child_pid=4242, child_started_at=12.5)
        live = self.store.read_claim("t1")
        assert live == renewed
        assert live.renewed_at == self.clock.wall() and live.claimed_at == self.clock.wall() - 7
        assert (live.child_pid, live.child_started_at, live.epoch) == (4242, 12.5, 1)
        self.store.renew(renewed)  # no runner named: the noted one stays
        assert self.store.read_claim("t1").child_pid == 4242
        assert self.kinds() == ["claimed"]  # a renewal changes no state, so it writes no event

    # -- fencing ----------------------------------------------------------------

    def test_a_superseded_claim_is_fenced_and_changes_nothing(self) -> None:
        old = self.claim(agent="sleepy")
        assert self.store.reclaim(old, reason="expired", max_attempts=3) is not None
        new = self.claim(agent="fresh")
        assert new.epoch == old.epoch + 1
        before = self.snapshot()
        actions = [lambda: self.store.renew(old), lambda: self.store.finish(old, ok=True, max_attempts=3),
                   lambda: self.store.finish(old, ok=False, max_attempts=3),
                   lambda: self.store.release(old, reason="stopping")]
        for action in actions:
            with pytest.raises(ClaimLostError) as caught:
                action()
            assert caught.value.task == "t1" and caught.value.epoch == old.epoch
        record, claim, _ = self.snapshot()
        assert (record, claim) == before[:2]
        fenced = self.store.read_events(before[2])[0]
        assert [e["event"] for e in fenced] == ["fenced"] * 4
        assert [e["action"] for e in fenced] == ["renew", "done", "fail", "release"]
        assert all(e["agent"] == "sleepy" and e["epoch"] == old.epoch and e["task"] == "t1" for e in fenced)
        assert all("state" not in e for e in fenced)  # a note: no task changed state
        self.store.finish(new, ok=True, max_attempts=3)
        assert self.record().state == "done"

    def test_a_claim_whose_file_was_replaced_is_fenced(self) -> None:
        """Same epoch on the record, but the live claim belongs to someone else (a hand edit, a bug)."""
        mine = self.claim(agent="a1")
        other = Claim(**{**mine.to_json(), "agent": "intruder"})
        self.store.plant(claim=other)
        with pytest.raises(ClaimLostError, match="no longer ours"):
            self.store.finish(mine, ok=True, max_attempts=3)
        assert self.record().state == State.RUNNING and self.store.read_claim("t1") == other

    # -- reclaim ------------------------------------------------------------------

    def test_reclaim_counted_spends_the_attempt(self) -> None:
        claim = self.claim(agent="victim")
        record = self.store.reclaim(claim, reason="dead", max_attempts=3)
        assert record is not None and record == self.record()
        assert (record.state, record.attempts, record.epoch) == (State.PENDING, 1, 1)
        assert "victim" in record.last_error and "dead" in record.last_error
        assert [h["outcome"] for h in record.history] == ["reclaimed"]
        assert self.store.read_claim("t1") is None
        nxt = self.claim()
        assert nxt.epoch == 2 and nxt.attempt == 2

    def test_reclaim_counted_fails_the_task_at_max_attempts(self) -> None:
        record = self.store.reclaim(self.claim(), reason="expired", max_attempts=1)
        assert record.state == State.FAILED and record.attempts == 1
        assert self.store.claim("t1", current_holder("a2"), lease_s=LEASE_S) is None

    def test_reclaim_uncounted_is_a_release(self) -> None:
        claim = self.claim()
        record = self.store.reclaim(claim, reason="fleet stopping", max_attempts=1, counted=False)
        assert record.state == State.PENDING and record.attempts == 0 and record.history == []
        assert self.store.read_claim("t1") is None
        event = self.store.read_events(0)[0][-1]
        assert event["event"] == "released" and event["reason"] == "fleet stopping"

    def test_renew_keeps_the_worktree_a_claim_started_from(self) -> None:
        claim = self.claim()
        claim.base, claim.branch = "a" * 40, "coordinator/t1/e1"
        self.store.renew(claim)
        live = self.store.read_claim("t1")
        assert live is not None and (live.base, live.branch) == ("a" * 40, "coordinator/t1/e1")

    def test_a_renewed_claim_is_not_reclaimed(self) -> None:
        judged = self.claim()
        snapshot = Claim(**judged.to_json())  # what the reaper read before the holder renewed
        self.clock.advance(5)
        self.store.renew(judged)
        before = self.snapshot()
        assert self.store.reclaim(snapshot, reason="expired", max_attempts=3) is None
        assert self.store.reclaim(snapshot, reason="expired", max_attempts=3, counted=False) is None
        assert self.snapshot() == before
        assert self.record().state == State.RUNNING and self.record().attempts == 0

    def test_a_finished_or_taken_over_claim_is_not_reclaimed(self) -> None:
        first = self.claim()
        self.store.release(first, reason="stopping")
        second = self.claim(agent="a2")
        before = self.snapshot()
        assert self.store.reclaim(first, reason="dead", max_attempts=3) is None
        assert self.snapshot() == before
        self.store.finish(second, ok=True, max_attempts=3)
        before = self.snapshot()
        assert self.store.reclaim(second, reason="dead", max_attempts=3) is None
        assert self.snapshot() == before and self.record().state == State.DONE

    # -- staleness, through the claim book ------------------------------------------

    def test_an_expired_lease_is_reaped_and_a_live_one_is_not(self) -> None:
        book = ClaimBook(self.store, lease_s=10)
        claim = book.claim(_task("t1"), current_holder("alive-but-hung"))
        self.clock.advance(10)
        assert book.reap_stale(lambda _: 3) == []  # exactly at the lease: still live
        assert self.store.read_claim("t1") == claim and self.record().state == State.RUNNING
        self.clock.advance(0.5)
        assert book.reap_stale(lambda _: 3) == ["t1"]
        record = self.record()
        assert record.state == State.PENDING and record.attempts == 1
        reclaimed = self.store.read_events(0)[0][-1]
        assert (reclaimed["event"], reclaimed["reason"], reclaimed["agent"]) == ("reclaimed", "expired",
                                                                                  "alive-but-hung")

    def test_renewal_keeps_a_live_holder_from_being_reaped(self) -> None:
        book = ClaimBook(self.store, lease_s=10)
        claim = book.claim(_task("t1"), current_holder("a1"))
        for _ in range(5):
            self.clock.advance(8)
            book.renew(claim)
            assert book.reap_stale(lambda _: 3) == []
        assert self.record().state == State.RUNNING and self.store.read_claim("t1").epoch == 1

    # -- crash leftovers, planted --------------------------------------------------

    def test_orphan_claim_from_a_crash_is_dropped_uncounted(self) -> None:
        """Crash after writing the claim file but before the record."""
        self.store.plant(record=Record(id="t1", state=State.PENDING, epoch=3, attempts=1))
        self.store.plant(claim=Claim(task="t1", agent="ghost", pid=dead_pid(), pid_started_at=0.0, host=HOST,
                                     claimed_at=0, renewed_at=0, lease_s=30, epoch=4, attempt=2))
        claim = self.store.claim("t1", current_holder("a1"), lease_s=LEASE_S)
        assert claim is not None and claim.epoch == 5 and claim.attempt == 2
        assert self.record().attempts == 1 and self.record().epoch == 5
        assert self.store.read_claim("t1") == claim
        orphan = self.store.read_events(0)[0][0]
        assert orphan["event"] == "orphan_claim_removed" and orphan["epoch"] == 4
        assert self.kinds() == ["orphan_claim_removed", "claimed"]

    def test_claim_left_on_finished_record_is_removed_by_reap(self) -> None:
        """Crash after writing the done record but before deleting the claim."""
        self.store.plant(record=Record(id="t1", state=State.DONE, epoch=2, attempts=1))
        self.store.plant(claim=Claim(task="t1", agent="ghost", pid=dead_pid(), pid_started_at=0.0, host=HOST,
                                     claimed_at=0, renewed_at=0, lease_s=30, epoch=2, attempt=1))
        assert ClaimBook(self.store, lease_s=30).reap_stale(lambda _: 3) == []
        assert self.store.read_claim("t1") is None
        assert self.record().state == "done" and self.record().attempts == 1
        assert self.kinds() == ["orphan_claim_removed"]

    def test_claim_left_on_finished_record_by_a_live_holder_goes_at_lease_expiry(self) -> None:
        me = current_holder("crashed-thread")
        now = self.clock.wall()
        self.store.plant(record=Record(id="t1", state=State.FAILED, epoch=1, attempts=3),
                         claim=Claim(task="t1", agent=me.agent, pid=me.pid, pid_started_at=me.pid_started_at,
                                     host=me.host, claimed_at=now, renewed_at=now, lease_s=5, epoch=1, attempt=3))
        book = ClaimBook(self.store, lease_s=5)
        assert book.reap_stale(lambda _: 3) == [] and self.store.read_claim("t1") is not None
        self.clock.advance(6)
        assert book.reap_stale(lambda _: 3) == []
        assert self.store.read_claim("t1") is None and self.record().state == State.FAILED

    def test_running_record_without_claim_is_repaired_uncounted(self) -> None:
        self.store.plant(record=Record(id="t1", state=State.RUNNING, epoch=1, attempts=0, agent="ghost"))
        self.claim("t2")  # running with its claim: not touched
        assert self.store.repair(["t1", "t2", "never"]) == ["t1"]
        record = self.record()
        assert record.state == "pending" and record.attempts == 0 and record.epoch == 1
        assert self.record("t2").state == State.RUNNING
        event = self.store.read_events(0)[0][-1]
        assert (event["event"], event["task"], event["state"]) == ("released", "t1", "pending")
        assert self.claim().epoch == 2

    # -- landing (workspaces) -----------------------------------------------------

    def test_land_runs_the_move_under_the_live_claim_and_finishes_the_task(self) -> None:
        claim = self.claim()
        seen = []

        def move() -> str:
            seen.append(self.store.read_claim("t1"))
            return "abc123"

        record = self.store.land(claim, move, extra={"base": "b0", "branch": "coordinator/t1/e1", "tip": "t9"})
        assert seen == [claim]
        assert record is not None and record.state == State.DONE and record.attempts == 1
        assert (record.landed, record.base, record.branch, record.tip) == ("abc123", "b0", "coordinator/t1/e1", "t9")
        assert self.store.read_claim("t1") is None and self.record().landed == "abc123"
        assert self.kinds()[-1] == "landed" and self.store.read_events(0)[0][-1]["commit"] == "abc123"

    def test_a_landing_that_did_not_move_the_ref_changes_nothing(self) -> None:
        claim = self.claim()
        before = self.snapshot()
        assert self.store.land(claim, lambda: None) is None
        assert self.snapshot() == before
        self.store.finish(claim, ok=True, max_attempts=1)  # the claim is still live and usable

    def test_a_stale_claim_never_lands(self) -> None:
        old = self.claim()
        self.store.reclaim(old, reason="expired", max_attempts=3)
        new = self.claim("t1", "a2")
        called = []
        with pytest.raises(ClaimLostError):
            self.store.land(old, lambda: called.append(1) or "bad")
        assert called == [] and self.record().state == State.RUNNING and self.record().landed is None
        assert self.kinds()[-1] == "land_fenced"
        assert self.store.land(new, lambda: "good").landed == "good"

    def test_reclaim_waits_for_a_landing_in_progress(self) -> None:
        claim = self.claim()
        outcome: dict[str, object] = {}

        def move() -> str:
            thread = threading.Thread(target=lambda: outcome.update(
                reclaimed=self.store.reclaim(claim, reason="expired", max_attempts=3)))
            thread.start()
            thread.join(0.3)
            outcome["blocked"] = thread.is_alive()
            outcome["thread"] = thread
            return "abc"

        self.store.land(claim, move)
        outcome["thread"].join(10)
        assert outcome["blocked"] is True  # the reclaim could not run while the ref moved
        assert outcome["reclaimed"] is None and self.record().state == State.DONE

    def test_requeue_counts_conflicts_apart_from_attempts(self) -> None:
        first = self.claim()
        record = self.store.requeue(first, kind="conflict", reason="a.txt", max_conflicts=1,
                                    extra={"branch": "coordinator/t1/e1", "tip": "t1"})
        assert (record.state, record.attempts, record.conflicts) == (State.PENDING, 0, 1)
        assert record.branch == "coordinator/t1/e1" and record.history[-1]["outcome"] == "conflict"
        second = self.claim()
        assert (second.epoch, second.attempt) == (2, 1)
        record = self.store.requeue(second, kind="gate_failed", reason="red", max_conflicts=1)
        assert (record.state, record.conflicts) == (State.FAILED, 2) and "max_conflicts" in record.last_error
        assert self.kinds()[-3:] == ["conflict", "claimed", "gate_failed"]
        assert self.store.retry("t1").conflicts == 0

    def test_requeue_of_a_stale_claim_is_fenced(self) -> None:
        old = self.claim()
        self.store.reclaim(old, reason="dead", max_attempts=3)
        with pytest.raises(ClaimLostError):
            self.store.requeue(old, kind="conflict", reason="x", max_conflicts=3)
        assert self.record().conflicts == 0

    # -- the event feed -----------------------------------------------------------

    def test_each_operation_writes_exactly_its_event_in_order(self) -> None:
        holder: dict[str, Claim] = {}

        def claim() -> None:
            holder["c"] = self.claim()

        steps: list[tuple[Callable[[], object], list[tuple[str, str]]]] = [
            (claim, [("claimed", "running")]),
            (lambda: self.store.renew(holder["c"]), []),
            (lambda: self.store.finish(holder["c"], ok=False, max_attempts=3), [("retrying", "pending")]),
            (claim, [("claimed", "running")]),
            (lambda: self.store.release(holder["c"], reason="stop"), [("released", "pending")]),
            (claim, [("claimed", "running")]),
            (lambda: self.store.reclaim(holder["c"], reason="dead", max_attempts=3), [("reclaimed", "pending")]),
            (claim, [("claimed", "running")]),
            (lambda: self.store.finish(holder["c"], ok=True, max_attempts=3), [("done", "done")]),
            (lambda: self.store.retry("t1"), [("retried", "pending")]),
            (lambda: self.store.cancel("t1"), [("cancelled", "cancelled")]),
        ]
        everything = []
        for step, expected in steps:
            cursor = self.store.event_cursor()
            self.clock.advance(1)
            step()
            new, end = self.store.read_events(cursor)
            assert end == self.store.event_cursor()
            assert [(e["event"], e["state"]) for e in new] == expected
            for event in new:
                assert event["task"] == "t1" and event["ts"] == round(self.clock.wall(), 6)
                assert type(event["state"]) is str
            everything += new
        assert self.store.read_events(0)[0] == everything
        by_kind = {e["event"]: e for e in everything}
        assert by_kind["retried"]["previous"] == "done"
        assert by_kind["reclaimed"]["reason"] == "dead" and by_kind["released"]["reason"] == "stop"
        assert [e["epoch"] for e in everything if e["event"] == "claimed"] == [1, 2, 3, 4]
        assert [e["attempt"] for e in everything if e["event"] == "claimed"] == [1, 2, 2, 3]

    def test_read_events_returns_only_newer_events(self) -> None:
        assert self.store.read_events(0) == ([], 0) and self.store.event_cursor() == 0
        self.store.append_event("agent_started", agent="a1", pid=1)
        middle = self.store.event_cursor()
        assert middle > 0
        self.store.append_event("note", n=2)
        self.store.append_event("note", n=3)
        new, end = self.store.read_events(middle)
        assert [e.get("n") for e in new] == [2, 3] and end == self.store.event_cursor()
        assert self.store.read_events(end) == ([], end)
        first, _ = self.store.read_events(0)
        assert first[0] == {"ts": round(self.clock.wall(), 6), "event": "agent_started", "agent": "a1", "pid": 1}
        assert len(first) == 3

    # -- reads are copies --------------------------------------------------------

    def test_reads_return_copies(self) -> None:
        claim = self.claim()
        self.store.finish(claim, ok=False, error="boom", max_attempts=3, usage={"requests": 1})
        live = self.claim()
        record_before, claim_before, _ = self.snapshot()

        record = self.store.read_record("t1")
        record.state, record.attempts = State.DONE, 99
        record.usage["requests"] = 1000
        record.history.append({"forged": True})
        for listed in self.store.iter_records():
            listed.history.clear()
            listed.usage.clear()
        got = self.store.read_claim("t1")
        got.epoch, got.agent = 77, "forger"
        for listed_claim in self.store.list_claims():
            listed_claim.lease_s = 0
        live.lease_s = 1  # the object claim() returned is the caller's, not the store's
        events = self.store.read_events(0)[0]
        events[0]["event"] = "forged"
        events.clear()

        assert self.snapshot()[:2] == (record_before, claim_before)
        assert self.store.read_events(0)[0][0]["event"] == "claimed"

    def test_the_record_an_operation_returns_is_a_copy(self) -> None:
        record = self.store.finish(self.claim(), ok=True, max_attempts=3, usage={"requests": 1})
        record.usage["requests"] = 5
        record.history.clear()
        assert self.record().usage == {"requests": 1} and len(self.record().history) == 1

    # -- agent heartbeats ----------------------------------------------------------

    def test_agent_heartbeats_round_trip(self) -> None:
        assert self.store.read_agent("agent-1") is None and self.store.read_agents() == []
        status = {"id": "agent-2", "pid": 12, "state": "running", "task": "t1", "heartbeat_at": 5.5,
                  "overhead": {"tasks": 1, "claim_ms": 0.25}}
        self.store.write_agent("agent-2", status)
        self.store.write_agent("agent-1", {"id": "agent-1", "state": "idle", "task": None})
        status["state"] = "mutated after writing"
        status["overhead"]["tasks"] = 9
        got = self.store.read_agent("agent-2")
        assert got == {"id": "agent-2", "pid": 12, "state": "running", "task": "t1", "heartbeat_at": 5.5,
                       "overhead": {"tasks": 1, "claim_ms": 0.25}}
        got["overhead"]["tasks"] = 7
        assert self.store.read_agent("agent-2")["overhead"]["tasks"] == 1
        assert [a["id"] for a in self.store.read_agents()] == ["agent-1", "agent-2"]
        self.store.write_agent("agent-1", {"id": "agent-1", "state": "stopped"})
        assert self.store.read_agent("agent-1") == {"id": "agent-1", "state": "stopped"}
        assert json.dumps(self.store.read_agents())  # plain JSON data

    # -- concurrency ---------------------------------------------------------------

    def test_concurrent_claims_from_threads_have_one_winner(self) -> None:
        barrier = threading.Barrier(8)
        won: list[Claim] = []

        def contend(n: int) -> None:
            barrier.wait(timeout=30)
            claim = self.store.claim("t1", current_holder(f"a{n}"), lease_s=LEASE_S)
            if claim is not None:
                won.append(claim)

        threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(won) == 1 and won[0].epoch == 1
        assert self.store.read_claim("t1") == won[0] and self.kinds() == ["claimed"]
