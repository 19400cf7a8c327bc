"""The heartbeat of one claim: renew its lease every ``heartbeat_s``, and fence itself when it cannot.

A claim not renewed for ``lease_s`` is stale, and another agent, perhaps on
another host, reclaims it and runs the task again. An agent that cannot renew (the
state store is unreachable, its host is cut off) must therefore stop before that
can happen: once ``lease_s`` minus a margin has passed since its last renewal and
its renewals are failing (or one has hung for a heartbeat), ``LeaseWatch`` says so,
the agent stops its runner and gives the task back (DESIGN §13). Time is the
clock's ``boot()`` (monotonic, counting a suspend), so a laptop that slept through
its lease fences too, unless its first renewal on waking succeeds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..clock import Clock, poll
from ..errors import TRANSIENT_STORE_ERRORS, ClaimLostError
from ..queue.claims import ClaimBook
from ..store import Claim

# The runner's pid goes into the claim at the first heartbeat, this soon after it starts:
# late enough that short tasks never pay for the extra write, early enough that a
# takeover can find and kill a long-running runner.
FIRST_BEAT_S = 0.5
# How much of the lease is kept back for stopping the runner before the lease runs out.
FENCE_MARGIN = 0.2


def fence_after_s(lease_s: float, heartbeat_s: float) -> float:
    """How long an agent may go without a renewal: the lease minus a margin, at least one heartbeat."""
    return max(heartbeat_s, lease_s - max(lease_s * FENCE_MARGIN, heartbeat_s))


class LeaseWatch:
    """When the claim was last renewed, whether renewing is failing, and so whether to fence."""

    def __init__(self, clock: Clock, lease_s: float, heartbeat_s: float) -> None:
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.fence_after_s = fence_after_s(lease_s, heartbeat_s)
        self.renewed_at = clock.boot()
        self.attempt_at: float | None = None  # a renewal under way since then
        self.failing = False

    def attempting(self) -> None:
        self.attempt_at = self.clock.boot()

    def renewed(self) -> None:
        self.renewed_at, self.attempt_at, self.failing = self.clock.boot(), None, False

    def failed(self) -> None:
        self.attempt_at, self.failing = None, True

    def fence_reason(self) -> str | None:
        """Why the run must stop now, or None: silent past the limit, with renewals failing or hung."""
        now = self.clock.boot()
        silent = now - self.renewed_at
        hung = self.attempt_at is not None and now - self.attempt_at >= self.heartbeat_s
        if silent < self.fence_after_s or not (self.failing or hung):
            return None
        return (f"the lease could not be renewed for {silent:.0f}s (the state store is unreachable), so the run "
                f"was stopped before another agent may take the task over")


def keep_alive(book: ClaimBook, claim: Claim, watch: LeaseWatch, *, wake: threading.Event,
               is_current: Callable[[], bool], child_pid: Callable[[], int | None],
               warn: Callable[[str], None], on_renewed: Callable[[], None]) -> str | None:
    """Renew until the run ends; why the claim was lost (taken over), or None."""
    wake.wait(min(watch.heartbeat_s, FIRST_BEAT_S))
    warned = False
    for _ in poll(watch.heartbeat_s, wake=wake):
        if not is_current():
            return None
        if book.pulse():
            warn(f"this process was paused; renewing {claim.task} at once")
        watch.attempting()
        try:
            book.renew(claim, child_pid=child_pid())
        except ClaimLostError as exc:
            return exc.args[0]
        except TRANSIENT_STORE_ERRORS as exc:  # the run goes on until the fence; fencing decides the rest
            watch.failed()
            if not warned:
                warn(f"{exc}; the lease on {claim.task} could not be renewed, retrying every heartbeat")
            warned = True
            continue
        watch.renewed()
        if warned:
            warn(f"renewed the lease on {claim.task} again")
            warned = False
        on_renewed()
    return None
