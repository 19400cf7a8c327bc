"""Leases, heartbeats, staleness and fencing: the claim protocol of DESIGN §5.

Every decision runs inside ``store.lock()`` in a short critical section, and
every write an agent makes about a task is fenced: it names the epoch of its
claim, and it is refused (``ClaimLostError``, plus a ``fenced`` event) unless
that claim is still the live one. Order of writes, chosen so that a crash
between any two of them is recoverable:

* claim:   claim file, then record (running). A claim file whose epoch is
  ahead of its record is an orphan of a crash and is dropped uncounted.
* finish:  record (done / pending / failed), then delete the claim file. A claim
  file left on a finished record is just removed.
* reclaim: record (pending or failed, attempt counted), then delete the claim.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from .errors import ClaimLostError
from .store import Claim, Record, Store

HOST = socket.gethostname()
# psutil derives start times from boot time + clock ticks; two reads of one
# process agree far closer than this, while a reused PID differs by much more.
START_TIME_TOLERANCE_S = 0.05

Clock = Callable[[], float]


@dataclass(frozen=True)
class Holder:
    """Who is claiming: an agent id and its process identity."""

    agent: str
    pid: int
    pid_started_at: float
    host: str = HOST

    @classmethod
    def current(cls, agent: str) -> Holder:
        """The calling process as a claim holder."""
        pid = os.getpid()
        return cls(agent=agent, pid=pid, pid_started_at=psutil.Process(pid).create_time())


def process_is_alive(pid: int, started_at: float) -> bool:
    """Whether ``pid`` is running and is the same process that started at ``started_at``."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started_at) > START_TIME_TOLERANCE_S:
            return False  # the PID was reused by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return False


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def kill_runner(claim: Claim) -> None:
    """Kill the runner a taken-over claim left behind, so a task never runs twice at once.

    Only on this host and only on proof of identity (pid plus start time), so a
    reused pid is never signalled.
    """
    if claim.host != HOST or not claim.child_pid or claim.child_started_at is None:
        return
    if not process_is_alive(claim.child_pid, claim.child_started_at):
        return
    try:
        os.killpg(claim.child_pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stale_reason(claim: Claim, now: float) -> str | None:
    """Why ``claim`` is stale ("dead", "reused", "expired"), or None if it is live."""
    if claim.host == HOST and not process_is_alive(claim.pid, claim.pid_started_at):
        return "dead"  # gone, a zombie, or the pid reused by another process
    if now - claim.renewed_at > claim.lease_s:
        return "expired"
    return None


class ClaimBook:
    """The claim protocol over a ``Store``; one per agent or supervisor process."""

    def __init__(self, store: Store, *, lease_s: float, clock: Clock = time.time) -> None:
        self.store = store
        self.lease_s = lease_s
        self.clock = clock

    def try_claim(self, task_id: str, max_attempts: int, holder: Holder) -> Claim | None:
        """Claim ``task_id`` if it is pending and unclaimed; caller holds the lock."""
        record = self.store.read_record(task_id) or Record(id=task_id)
        if record.state != "pending":
            return None
        existing = self.store.read_claim(task_id)
        epoch = record.epoch
        if existing is not None:
            reason = stale_reason(existing, self.clock())
            if reason is None:
                return None
            record = self._reclaim(existing, record, reason, max_attempts)
            if record.state != "pending":
                return None
            epoch = max(epoch, existing.epoch)
        now = self.clock()
        claim = Claim(task=task_id, agent=holder.agent, pid=holder.pid, pid_started_at=holder.pid_started_at,
                      host=holder.host, claimed_at=now, renewed_at=now, lease_s=self.lease_s,
                      epoch=epoch + 1, attempt=record.attempts + 1)
        self.store.write_claim(claim)
        record.state, record.epoch, record.agent, record.claimed_at = "running", claim.epoch, holder.agent, now
        self.store.write_record(record)
        self.store.append_event("claimed", task=task_id, agent=holder.agent, epoch=claim.epoch,
                                attempt=claim.attempt)
        return claim

    def renew(self, claim: Claim, *, child_pid: int | None = None) -> Claim:
        """Extend the lease (and note the runner's pid); ``ClaimLostError`` if taken over."""
        with self.store.lock():
            self._check_current(claim, "renew")
            claim.renewed_at = self.clock()
            if child_pid is not None and child_pid != claim.child_pid:
                claim.child_pid = child_pid
                claim.child_started_at = _start_time(child_pid)
            self.store.write_claim(claim)
        return claim

    def recover_unclaimed(self, running_ids: Iterable[str]) -> list[str]:
        """Records left ``running`` with no claim file go back to pending, uncounted. Caller holds the lock.

        Claims are written before records and deleted after them, so this state
        can only come from outside the protocol (a hand edit, a restored backup).
        """
        recovered = []
        for task_id in running_ids:
            record = self.store.read_record(task_id)
            if record is None or record.state != "running" or self.store.read_claim(task_id) is not None:
                continue
            record.state = "pending"
            self.store.write_record(record)
            self.store.append_event("released", task=task_id, agent=record.agent, epoch=record.epoch,
                                    reason="running record had no claim")
            recovered.append(task_id)
        return recovered

    def finish(self, claim: Claim, state: str, *, error: str | None = None, usage: dict | None = None,
               max_attempts: int = 1, extra: dict | None = None) -> Record:
        """Record the attempt's outcome: ``done``, or ``failed`` (retried while attempts remain)."""
        with self.store.lock():
            record = self._check_current(claim, "done" if state == "done" else "fail")
            record.attempts = claim.attempt
            if state != "done":
                state = "failed" if record.attempts >= max_attempts else "pending"
            now = self.clock()
            record.state, record.last_error, record.finished_at = state, error, now
            if usage:
                record.usage = usage
            record.file_hash = (extra or {}).get("file_hash", record.file_hash)
            record.history.append({"attempt": claim.attempt, "agent": claim.agent, "epoch": claim.epoch,
                                   "started_at": claim.claimed_at, "finished_at": now,
                                   "outcome": "done" if state == "done" else "failed", "error": error,
                                   **(extra or {})})
            self.store.write_record(record)
            self.store.delete_claim(claim.task)
            self.store.append_event(state if state != "pending" else "retrying", task=claim.task,
                                    agent=claim.agent, epoch=claim.epoch, attempt=claim.attempt, error=error)
            return record

    def release(self, claim: Claim, reason: str = "stopped") -> None:
        """Give the task back without counting the attempt (shutdown, SIGTERM)."""
        with self.store.lock():
            record = self._check_current(claim, "release")
            record.state = "pending"
            self.store.write_record(record)
            self.store.delete_claim(claim.task)
            self.store.append_event("released", task=claim.task, agent=claim.agent, epoch=claim.epoch,
                                    reason=reason)

    def reap_stale(self, max_attempts_of: Callable[[str], int]) -> list[str]:
        """Reclaim every stale claim; returns the task ids reclaimed. Caller holds the lock."""
        reaped = []
        now = self.clock()
        for claim in self.store.list_claims():
            reason = stale_reason(claim, now)
            if reason is None:
                continue
            record = self.store.read_record(claim.task) or Record(id=claim.task)
            self._reclaim(claim, record, reason, max_attempts_of(claim.task))
            reaped.append(claim.task)
        return reaped

    def release_dead(self, claim: Claim, reason: str) -> None:
        """Give back a dead holder's claim uncounted (the supervisor, at shutdown). Caller holds the lock."""
        record = self.store.read_record(claim.task)
        if record is not None and record.epoch == claim.epoch and record.state == "running":
            record.state = "pending"
            self.store.write_record(record)
            self.store.append_event("released", task=claim.task, agent=claim.agent, epoch=claim.epoch,
                                    reason=reason)
        self.store.delete_claim(claim.task)

    def _reclaim(self, claim: Claim, record: Record, reason: str, max_attempts: int) -> Record:
        """Take a stale claim over: count the attempt, raise nothing, drop the claim file."""
        if record.epoch != claim.epoch or record.state != "running":
            # Crash leftovers: a claim written before its record, or left on a finished task.
            self.store.delete_claim(claim.task)
            self.store.append_event("orphan_claim_removed", task=claim.task, agent=claim.agent,
                                    epoch=claim.epoch, record_state=record.state)
            return record
        kill_runner(claim)
        record.attempts = claim.attempt
        record.state = "failed" if record.attempts >= max_attempts else "pending"
        record.last_error = f"claim reclaimed: agent {claim.agent} (pid {claim.pid}) {reason}"
        record.history.append({"attempt": claim.attempt, "agent": claim.agent, "epoch": claim.epoch,
                               "started_at": claim.claimed_at, "finished_at": self.clock(),
                               "outcome": "reclaimed", "error": record.last_error})
        self.store.write_record(record)
        self.store.delete_claim(claim.task)
        self.store.append_event("reclaimed", task=claim.task, agent=claim.agent, epoch=claim.epoch,
                                reason=reason, state=record.state)
        return record

    def _check_current(self, claim: Claim, action: str) -> Record:
        """Fencing: the record must still be at this claim's epoch with this claim live."""
        record = self.store.read_record(claim.task)
        live = self.store.read_claim(claim.task)
        problem = None
        if record is None or record.epoch != claim.epoch or record.state != "running":
            state = record.state if record else "missing"
            problem = f"task is now {state} at epoch {record.epoch if record else 0}"
        elif live is None or live.epoch != claim.epoch or live.agent != claim.agent:
            problem = "claim file no longer ours"
        if problem is None:
            return record
        self.store.append_event("fenced", task=claim.task, agent=claim.agent, epoch=claim.epoch,
                                action=action, reason=problem)
        raise ClaimLostError(claim.task, claim.epoch, f"{action} refused, {problem}")
