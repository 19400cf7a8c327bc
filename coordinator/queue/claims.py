"""The claim protocol's policy (docs/architecture.md, "The claim protocol"): who holds a claim, when it is stale, what a takeover does.

The store makes each state change atomic and fenced (``store.base``); this
module decides *when* to make them. A claim is stale when

* its process is provably dead: same host, and the pid is gone, a zombie, or
  reused by a process with another start time (``liveness.py``); or
* its lease expired: not renewed for ``lease_s``, whatever the process looks like.
  This is what catches a hung or paused (SIGSTOP) agent.

A takeover kills the runner the stale claim left behind (only on proof of its
identity) before the store reclaims the task, so a task never runs twice at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..clock import REAL_CLOCK, Clock
from ..config import FleetSection
from ..liveness import HOST, kill_group_of, process_is_alive, start_time
from ..store import Claim, Holder, Record, Store
from ..store.base import ReadySet
from ..tasks import Task


PAUSE_MARGIN_S = 2.0


def current_holder(agent: str) -> Holder:
    """The calling process as a claim holder."""
    pid = os.getpid()
    return Holder(agent=agent, pid=pid, pid_started_at=start_time(pid) or 0.0, host=HOST)


def stale_reason(claim: Claim, now: float) -> str | None:
    """Why ``claim`` is stale ("dead", "expired"), or None if it is live."""
    if claim.host == HOST and not process_is_alive(claim.pid, claim.pid_started_at):
        return "dead"  # gone, a zombie, or the pid reused by another process
    if now - claim.renewed_at > claim.lease_s:
        return "expired"
    return None


def holder_is_dead(claim: Claim) -> bool:
    """Proof that the claim's holder is gone (this host only; elsewhere nothing is proven)."""
    return claim.host == HOST and not process_is_alive(claim.pid, claim.pid_started_at)


def retry_backoff_s(fleet: FleetSection, attempt: int) -> float:
    """How long a task whose attempt ``attempt`` failed waits before it may be claimed again.

    Exponential and capped: an attempt that failed at once (a flaky test, a rate limit
    upstream) is not retried in the same second, and a long run of failures waits minutes.
    """
    return min(fleet.retry_backoff_max_s, fleet.retry_backoff_s * 2 ** max(0, attempt - 1))


def kill_runner(claim: Claim) -> None:
    """Kill the runner a taken-over claim left behind, on this host and only on proof of identity."""
    if claim.host == HOST and claim.child_pid and claim.child_started_at is not None:
        kill_group_of(claim.child_pid, claim.child_started_at)


class ClaimBook:
    """The claim protocol over a ``Store``: one per agent or supervisor process.

    It also notices when its own process was stopped (SIGSTOP, a sleeping laptop):
    every loop of the process calls ``pulse()``, and a gap far longer than the
    loops allow means the process itself was not running. Then every holder was
    probably stopped too, so for one lease from now a claim whose lease merely
    expired is not reclaimed (a provably dead holder still is): the holders get
    one lease to renew, and a run that finished during the pause is recorded
    instead of being run again.
    """

    def __init__(self, store: Store, *, lease_s: float, heartbeat_s: float = 5.0,
                 clock: Clock = REAL_CLOCK) -> None:
        self.store = store
        self.lease_s = lease_s
        self.clock = clock
        # Loops pulse at least every heartbeat; a gap this long is a pause, not a slow loop.
        self.pause_after_s = 2 * heartbeat_s + PAUSE_MARGIN_S
        self._pulse_at: float | None = None
        self._grace_until = float("-inf")

    def pulse(self) -> bool:
        """Note that this process runs; True when it was just paused (grace begins)."""
        now = self.clock.boot()
        paused = self._pulse_at is not None and now - self._pulse_at > self.pause_after_s
        self._pulse_at = now
        if paused:
            self._grace_until = now + self.lease_s
        return paused

    def grant_grace(self) -> None:
        """Give every holder one lease to renew (after an outage of the store no heartbeat could cross)."""
        self._grace_until = self.clock.boot() + self.lease_s

    def in_grace(self) -> bool:
        """Whether expired leases are being given time to renew after this process was paused."""
        return self.clock.boot() < self._grace_until

    def claim(self, task: Task, holder: Holder) -> Claim | None:
        """Claim ``task`` if it is pending and unclaimed."""
        return self.store.claim(task.id, holder, lease_s=self.lease_s)

    def claim_next(self, ready: ReadySet, holder: Holder) -> Claim | None:
        """Claim the best ready task from the store's own ready set."""
        return ready.claim_next(holder, lease_s=self.lease_s)

    def renew(self, claim: Claim, *, child_pid: int | None = None) -> Claim:
        """Extend the lease, noting a new runner's identity; ``ClaimLostError`` if taken over."""
        if child_pid is not None and child_pid != claim.child_pid:
            return self.store.renew(claim, child_pid=child_pid, child_started_at=start_time(child_pid))
        return self.store.renew(claim)

    def finish(self, claim: Claim, *, ok: bool, max_attempts: int, error: str | None = None,
               usage: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
               backoff_s: float = 0.0) -> Record:
        """Record the attempt's outcome (fenced); a task put back waits ``backoff_s``."""
        return self.store.finish(claim, ok=ok, max_attempts=max_attempts, error=error, usage=usage, extra=extra,
                                 backoff_s=backoff_s)

    def release(self, claim: Claim, reason: str = "stopped") -> Record:
        """Give the task back without counting the attempt (fenced)."""
        return self.store.release(claim, reason=reason)

    def reap_stale(self, max_attempts_of: Callable[[str], int]) -> list[str]:
        """Reclaim every stale claim, killing what it left running; the task ids reclaimed."""
        reaped = []
        self.pulse()
        now = self.store.now()
        for claim in self.store.list_claims():
            reason = stale_reason(claim, now)
            if reason is None or (reason == "expired" and self.in_grace()):
                continue
            kill_runner(claim)
            if self.store.reclaim(claim, reason=reason, max_attempts=max_attempts_of(claim.task)) is not None:
                reaped.append(claim.task)
        return reaped

    def release_dead(self, reason: str) -> list[str]:
        """Give back, uncounted, every claim whose holder is provably dead (the fleet stopping)."""
        released = []
        for claim in self.store.list_claims():
            if holder_is_dead(claim) and self.store.reclaim(claim, reason=reason, max_attempts=1,
                                                            counted=False) is not None:
                released.append(claim.task)
        return released
