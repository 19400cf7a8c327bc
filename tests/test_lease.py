"""LeaseWatch: when an agent that cannot renew its claim must stop its own run (self-fencing)."""

from __future__ import annotations

from coordinator.clock import ManualClock
from coordinator.fleet.lease import LeaseWatch, fence_after_s


def test_the_fence_comes_before_the_lease_runs_out_and_after_at_least_one_heartbeat() -> None:
    assert fence_after_s(30, 5) == 24  # 30 s lease less a fifth
    assert fence_after_s(3, 0.3) == 2.4
    assert fence_after_s(10, 4) == 6  # less a heartbeat when that is more than a fifth
    assert fence_after_s(1, 2) == 2  # never under one heartbeat


def test_failing_renewals_fence_once_the_limit_passes() -> None:
    clock = ManualClock()
    watch = LeaseWatch(clock, lease_s=30, heartbeat_s=5)
    for _ in range(4):
        clock.advance(5)
        watch.attempting()
        watch.failed()
        assert watch.fence_reason() is None  # 20 s silent: within the limit
    clock.advance(4)
    reason = watch.fence_reason()
    assert reason is not None and "could not be renewed for 24s" in reason


def test_a_renewal_hung_for_a_heartbeat_past_the_limit_fences() -> None:
    clock = ManualClock()
    watch = LeaseWatch(clock, lease_s=30, heartbeat_s=5)
    clock.advance(20)
    watch.attempting()  # a renewal that never returns (a partitioned network)
    clock.advance(4.9)
    assert watch.fence_reason() is None  # past the limit, but the call is younger than a heartbeat
    clock.advance(0.1)
    assert watch.fence_reason() is not None


def test_a_long_pause_whose_first_renewal_succeeds_does_not_fence() -> None:
    clock = ManualClock()
    watch = LeaseWatch(clock, lease_s=30, heartbeat_s=5)
    clock.advance(3600)  # a laptop asleep for an hour: nothing failed yet, so nothing says fence
    assert watch.fence_reason() is None
    watch.attempting()
    watch.renewed()
    clock.advance(1)
    assert watch.fence_reason() is None
