"""The operations of a one-host store, each a short critical section under the store's own lock.

``LockedStore`` owns the logic of every operation (the base class owns the
loop, as in dramatiq's result backends); the file and memory stores supply only
the lock and primitive reads and writes of claims, records and events.

The order of writes inside each operation is chosen so that a process killed
between any two of them leaves a state the next operation repairs:

* claim:   claim, then record (running). A claim whose record is not running at
  its epoch is a leftover and is dropped, uncounted, by the next claim or reclaim.
* finish, release, reclaim: record, then delete the claim. A claim left on a
  finished record is such a leftover too.
* A record left running with no claim cannot come from these orders; ``repair``
  puts it back to pending, uncounted.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from ..clock import REAL_CLOCK, Clock
from ..errors import ClaimLostError
from ..tasks.model import State, after_attempt, can, transition
from .base import WORKSPACE_FIELDS, Claim, Holder, Record, Store


class LockedStore(Store):
    """Every operation of the contract, over the primitives a concrete store supplies."""

    def __init__(self, clock: Clock = REAL_CLOCK) -> None:
        self.clock = clock

    # -- primitives -----------------------------------------------------------

    @abstractmethod
    def _lock(self) -> AbstractContextManager[Any]:
        """Mutual exclusion among every process using this store."""

    @abstractmethod
    def _put_claim(self, claim: Claim) -> None:
        """Create or replace the claim on ``claim.task``."""

    @abstractmethod
    def _drop_claim(self, task_id: str) -> None:
        """Remove the claim on ``task_id`` (no error when absent)."""

    @abstractmethod
    def _put_record(self, record: Record) -> None:
        """Replace the record of ``record.id``."""

    @abstractmethod
    def _put_event(self, event: dict[str, Any]) -> None:
        """Append one event to the feed."""

    @abstractmethod
    def _put_paused(self, paused: bool) -> None:
        """Set or clear the fleet's pause flag."""

    # -- operations -----------------------------------------------------------

    def now(self) -> float:
        return self.clock.wall()

    def append_event(self, kind: str, **fields: Any) -> None:
        self._put_event({"ts": round(self.now(), 6), "event": kind, **fields})

    def claim(self, task_id: str, holder: Holder, *, lease_s: float) -> Claim | None:
        with self._lock():
            record = self.read_record(task_id) or Record(id=task_id)
            if not can("claim", record.state) or (record.retry_at is not None and self.now() < record.retry_at):
                return None
            existing = self.read_claim(task_id)
            if existing is not None:
                self._drop_leftover(existing, record)  # a pending record's claim is always a leftover
            now = self.now()
            epoch = max(record.epoch, existing.epoch if existing else 0) + 1
            claim = Claim(task=task_id, agent=holder.agent, pid=holder.pid, pid_started_at=holder.pid_started_at,
                          host=holder.host, claimed_at=now, renewed_at=now, lease_s=lease_s, epoch=epoch,
                          attempt=record.attempts + 1, generation=record.generation)
            self._put_claim(claim)
            record.state = transition("claim", task_id, record.state, State.RUNNING)
            record.epoch, record.agent, record.claimed_at = epoch, holder.agent, now
            self._put_record(record)
            self.append_event("claimed", task=task_id, agent=holder.agent, epoch=epoch, attempt=claim.attempt,
                              state=record.state)
            return claim

    def renew(self, claim: Claim, *, child_pid: int | None = None,
              child_started_at: float | None = None) -> Claim:
        with self._lock():
            self._check_current(claim, "renew")
            claim.renewed_at = self.now()
            if child_pid is not None:
                claim.child_pid, claim.child_started_at = child_pid, child_started_at
            self._put_claim(claim)
            return claim

    def finish(self, claim: Claim, *, ok: bool, max_attempts: int, error: str | None = None,
               usage: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
               backoff_s: float = 0.0) -> Record:
        with self._lock():
            record = self._check_current(claim, "done" if ok else "fail")
            record.attempts = claim.attempt
            state = after_attempt(ok, record.attempts, max_attempts)
            record.state = transition("finish", claim.task, record.state, state)
            record.last_error, record.finished_at = error, self.now()
            record.retry_at = self.now() + backoff_s if state == State.PENDING and backoff_s > 0 else None
            if usage:
                record.usage = usage
            _note_workspace(record, extra)
            record.file_hash = (extra or {}).get("file_hash", record.file_hash)
            record.history.append(self._history(claim, "done" if ok else "failed", error, extra))
            self._put_record(record)
            self._drop_claim(claim.task)
            kind = "retrying" if state == State.PENDING else str(state)
            self.append_event(kind, task=claim.task, agent=claim.agent, epoch=claim.epoch, attempt=claim.attempt,
                              error=error, state=state, retry_at=record.retry_at)
            return record

    def release(self, claim: Claim, *, reason: str) -> Record:
        with self._lock():
            record = self._check_current(claim, "release")
            return self._release(claim, record, reason)

    def land(self, claim: Claim, move_ref: Callable[[], str | None], *,
             extra: dict[str, Any] | None = None) -> Record | None:
        # The ref moves inside this store's lock: reclaim, cancel and every other landing
        # wait for it, so the claim checked here is still live when the ref moves
        # (docs/workspaces.md, "Fencing the landing").
        with self._lock():
            record = self._check_current(claim, "land", event="land_fenced")
            landed = move_ref()
            if landed is None:
                return None
            record.attempts = claim.attempt
            record.state = transition("land", claim.task, record.state, State.DONE)
            record.last_error, record.finished_at, record.retry_at = None, self.now(), None
            _note_workspace(record, {**(extra or {}), "landed": landed})
            record.file_hash = (extra or {}).get("file_hash", record.file_hash)
            record.history.append(self._history(claim, "landed", None, extra))
            self._put_record(record)
            self._drop_claim(claim.task)
            self.append_event("landed", task=claim.task, agent=claim.agent, epoch=claim.epoch, commit=landed,
                              state=State.DONE)
            return record

    def requeue(self, claim: Claim, *, kind: str, reason: str, max_conflicts: int,
                extra: dict[str, Any] | None = None) -> Record:
        with self._lock():
            record = self._check_current(claim, kind)
            record.conflicts += 1
            state = State.FAILED if record.conflicts > max_conflicts else State.PENDING
            record.state = transition("requeue", claim.task, record.state, state)
            record.last_error = reason
            if state == State.FAILED:
                record.attempts, record.finished_at = claim.attempt, self.now()
                record.last_error = f"{reason} ({record.conflicts} conflicts, more than max_conflicts)"
            _note_workspace(record, extra)
            record.history.append(self._history(claim, kind, reason, extra))
            self._put_record(record)
            self._drop_claim(claim.task)
            self.append_event(kind, task=claim.task, agent=claim.agent, epoch=claim.epoch, reason=reason,
                              conflicts=record.conflicts, state=state)
            return record

    def reclaim(self, claim: Claim, *, reason: str, max_attempts: int, counted: bool = True) -> Record | None:
        with self._lock():
            live = self.read_claim(claim.task)
            if live != claim:
                return None  # renewed, finished or taken over since it was judged stale
            record = self.read_record(claim.task) or Record(id=claim.task)
            if record.epoch != claim.epoch or record.state != State.RUNNING:
                self._drop_leftover(claim, record)
                return None
            if not counted:
                return self._release(claim, record, reason)
            record.attempts = claim.attempt
            state = after_attempt(False, record.attempts, max_attempts)
            record.state = transition("reclaim", claim.task, record.state, state)
            record.last_error = f"claim reclaimed: agent {claim.agent} (pid {claim.pid}) {reason}"
            record.history.append(self._history(claim, "reclaimed", record.last_error, None))
            self._put_record(record)
            self._drop_claim(claim.task)
            self.append_event("reclaimed", task=claim.task, agent=claim.agent, epoch=claim.epoch, reason=reason,
                              state=state)
            return record

    def cancel(self, task_id: str) -> tuple[Record, Claim | None]:
        with self._lock():
            record = self.read_record(task_id) or Record(id=task_id)
            claim = self.read_claim(task_id)
            record.state = transition("cancel", task_id, record.state, State.CANCELLED)
            record.finished_at = self.now()
            if claim is not None:
                record.history.append(self._history(claim, "cancelled", "cancelled while running", None))
            self._put_record(record)
            self._drop_claim(task_id)  # the holder's next renew or finish is fenced
            self.append_event("cancelled", task=task_id, agent=claim.agent if claim else None,
                              state=State.CANCELLED)
            return record, claim

    def retry(self, task_id: str) -> Record:
        with self._lock():
            record = self.read_record(task_id) or Record(id=task_id)
            previous = record.state
            record.state = transition("retry", task_id, record.state, State.PENDING)
            record.attempts, record.last_error, record.retry_at = 0, None, None
            record.conflicts = 0
            record.generation += 1
            self._put_record(record)
            self.append_event("retried", task=task_id, previous=previous, state=State.PENDING,
                              generation=record.generation)
            return record

    def repair(self, task_ids: Iterable[str]) -> list[str]:
        repaired = []
        with self._lock():
            for task_id in task_ids:
                record = self.read_record(task_id)
                if record is None or not can("repair", record.state) or self.read_claim(task_id) is not None:
                    continue
                record.state = transition("repair", task_id, record.state, State.PENDING)
                self._put_record(record)
                self.append_event("released", task=task_id, agent=record.agent, epoch=record.epoch,
                                  reason="running record had no claim", state=State.PENDING)
                repaired.append(task_id)
        return repaired

    def set_paused(self, paused: bool) -> bool:
        with self._lock():
            if self.is_paused() == paused:
                return False
            self._put_paused(paused)
            self.append_event("paused" if paused else "resumed")
            return True

    def plant(self, *, claim: Claim | None = None, record: Record | None = None) -> None:
        """Write a claim or record as given, bypassing every rule.

        For tests that build the states a crash or a hand edit leaves (a claim
        ahead of its record, a running record with no claim), which no operation
        can produce.
        """
        with self._lock():
            if record is not None:
                self._put_record(record)
            if claim is not None:
                self._put_claim(claim)

    # -- pieces ---------------------------------------------------------------

    def _release(self, claim: Claim, record: Record, reason: str) -> Record:
        record.state = transition("release", claim.task, record.state, State.PENDING)
        self._put_record(record)
        self._drop_claim(claim.task)
        self.append_event("released", task=claim.task, agent=claim.agent, epoch=claim.epoch, reason=reason,
                          state=State.PENDING)
        return record

    def _drop_leftover(self, claim: Claim, record: Record) -> None:
        """Remove a claim a crash left behind: ahead of its record, or on a record no longer running."""
        self._drop_claim(claim.task)
        self.append_event("orphan_claim_removed", task=claim.task, agent=claim.agent, epoch=claim.epoch,
                          record_state=record.state)

    def _check_current(self, claim: Claim, action: str, *, event: str = "fenced") -> Record:
        """Fencing: the record must still be running at this claim's epoch, with this claim live."""
        record = self.read_record(claim.task)
        live = self.read_claim(claim.task)
        problem = None
        if record is None or record.epoch != claim.epoch or record.state != State.RUNNING:
            state = record.state if record else "missing"
            problem = f"task is now {state} at epoch {record.epoch if record else 0}"
        elif live is None or live.epoch != claim.epoch or live.agent != claim.agent:
            problem = "claim file no longer ours"
        if problem is None:
            return record
        self.append_event(event, task=claim.task, agent=claim.agent, epoch=claim.epoch, action=action,
                          reason=problem)
        raise ClaimLostError(claim.task, claim.epoch, f"{action} refused, {problem}")

    def _history(self, claim: Claim, outcome: str, error: str | None, extra: dict[str, Any] | None) -> dict:
        return {"attempt": claim.attempt, "agent": claim.agent, "epoch": claim.epoch,
                "started_at": claim.claimed_at, "finished_at": self.now(), "outcome": outcome, "error": error,
                **(extra or {})}


def _note_workspace(record: Record, extra: dict[str, Any] | None) -> None:
    """Copy the workspace fields an attempt reported (base, branch, tip, landed) onto its record."""
    for key in WORKSPACE_FIELDS:
        if extra and extra.get(key) is not None:
            setattr(record, key, extra[key])
