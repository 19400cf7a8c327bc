"""Gateway policies on their own, with injected clocks: tokens, retry, breaker, token buckets, priority."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.config import BackendConfig
from coordinator.errors import CircuitOpenError, FatalBackendError, RetryableError
from coordinator.gateway.breaker import CircuitBreaker
from coordinator.clock import ManualClock
from coordinator.gateway.limits import Limiter
from coordinator.gateway.retry import RetryPolicy, retry_call
from coordinator.gateway.tokens import new_fleet_token, read_token, task_token


# --- tokens -----------------------------------------------------------------------------------

def test_task_token_carries_its_claims_and_the_fleet_token_reads_as_fleet() -> None:
    fleet = new_fleet_token()
    token = task_token(fleet, "build-docs", agent="llm", priority=0, max_usd=1.5, max_tokens=9000)
    claims = read_token(fleet, token)
    assert claims is not None
    assert (claims.task_id, claims.agent, claims.priority, claims.max_usd, claims.max_tokens) == \
        ("build-docs", "llm", 0, 1.5, 9000)
    fleet_claims = read_token(fleet, fleet)
    assert fleet_claims is not None and fleet_claims.task_id is None


def test_tokens_from_another_fleet_or_tampered_are_rejected() -> None:
    fleet, other = new_fleet_token(), new_fleet_token()
    token = task_token(fleet, "t1", max_usd=0.01)
    assert read_token(other, token) is None
    head, payload, sig = token.split(".")
    forged = task_token(other, "t1", max_usd=1000.0).split(".")[1]
    assert read_token(fleet, f"{head}.{forged}.{sig}") is None
    assert read_token(fleet, token[:-2] + ("AA" if token[-2:] != "AA" else "BB")) is None
    for junk in ("", "sk-ant-whatever", "cgt.", "cgt.a.b.c", other):
        assert read_token(fleet, junk) is None


# --- retry ------------------------------------------------------------------------------------

def test_retry_honours_retry_after_then_full_jitter_and_stops_at_max() -> None:
    clock = ManualClock()
    attempts: list[int] = []

    async def flaky(n: int) -> str:
        attempts.append(n)
        if n == 0:
            raise RetryableError("429", status=429, retry_after_s=7.0)
        if n < 3:
            raise RetryableError("500", status=500)
        return "ok"

    policy = RetryPolicy(max_retries=4, base_s=0.5, max_s=30.0)
    assert asyncio.run(retry_call(flaky, policy, clock=clock, rand=lambda: 1.0)) == "ok"
    # retry-after wins; then the capped exponential at the top of its jitter range (rand=1).
    assert clock.slept == [7.0, 1.0, 2.0]
    assert attempts == [0, 1, 2, 3]


def test_retry_gives_up_after_max_retries_and_never_retries_fatal_or_open_circuit() -> None:
    clock = ManualClock()
    calls = {"n": 0}

    async def always(exc: Exception) -> None:
        calls["n"] += 1
        raise exc

    policy = RetryPolicy(max_retries=2, base_s=0.1, max_s=1.0)
    with pytest.raises(RetryableError):
        asyncio.run(retry_call(lambda n: always(RetryableError("x")), policy, clock=clock, rand=lambda: 0.5))
    assert calls["n"] == 3
    for fatal in (FatalBackendError("400", status=400), CircuitOpenError("open")):
        calls["n"] = 0
        with pytest.raises(type(fatal)):
            asyncio.run(retry_call(lambda n, f=fatal: always(f), policy, clock=clock))
        assert calls["n"] == 1


def test_retry_after_longer_than_the_cap_is_handed_back_not_slept() -> None:
    policy = RetryPolicy(max_retries=3, base_s=0.1, max_s=5.0)
    assert policy.delay_s(0, 120.0, lambda: 0.5) is None
    assert policy.delay_s(0, 4.0, lambda: 0.5) == 4.0
    assert policy.delay_s(5, None, lambda: 0.5) is None
    assert 0 <= policy.delay_s(10 - 8, None, lambda: 0.99) <= 0.4


# --- breaker ----------------------------------------------------------------------------------

def test_breaker_opens_after_n_failures_allows_one_probe_and_closes_on_success() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("b", failures=3, open_s=10.0, clock=clock)
    for _ in range(3):
        assert breaker.before_call() is False
        breaker.record_failure()
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError) as info:
        breaker.before_call()
    assert info.value.retry_after_s == pytest.approx(10.0)  # the injected clock has not moved
    clock.advance(10.0)
    assert breaker.state == "half_open"
    assert breaker.before_call() is True  # the one probe
    with pytest.raises(CircuitOpenError):
        breaker.before_call()  # a second caller while the probe runs
    breaker.record_success()
    assert breaker.state == "closed" and breaker.before_call() is False


def test_breaker_failed_probe_reopens_and_abandoned_probe_frees_the_slot() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("b", failures=1, open_s=5.0, clock=clock)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.before_call() is True
    breaker.record_failure()
    assert breaker.state == "open"
    clock.advance(5.0)
    assert breaker.before_call() is True
    breaker.record_abandoned()
    assert breaker.before_call() is True  # the next caller may probe


# --- limits -----------------------------------------------------------------------------------

def _grants_over(limiter: Limiter, clock: ManualClock, n: int, input_tokens: int = 1,
                 output_tokens: int = 0) -> list[float]:
    """Run ``n`` sequential calls through ``limiter``; the virtual time each was granted."""
    async def main() -> list[float]:
        times = []
        for _ in range(n):
            permit = await limiter.acquire(2, input_tokens)
            times.append(clock.now())
            limiter.release(permit, input_tokens=input_tokens, output_tokens=output_tokens)
        return times
    return asyncio.run(main())


def _max_in_window(times: list[float], window_s: float) -> int:
    return max(sum(1 for t in times if start <= t < start + window_s) for start in times)


def test_rpm_bucket_holds_the_configured_rate_over_any_minute() -> None:
    clock = ManualClock()
    limiter = Limiter(BackendConfig(rpm=60), clock)
    times = _grants_over(limiter, clock, 200)
    assert _max_in_window(times, 60.0) <= 61  # one second of burst at most
    assert times[-1] - times[0] >= 190  # and it waited rather than failing


def test_input_and_output_tpm_buckets_hold_their_rates() -> None:
    clock = ManualClock()
    limiter = Limiter(BackendConfig(input_tpm=6000), clock)
    times = _grants_over(limiter, clock, 100, input_tokens=500)  # 12 calls per minute
    assert _max_in_window(times, 60.0) * 500 <= 6000 + 500
    clock2 = ManualClock()
    limiter2 = Limiter(BackendConfig(output_tpm=3000), clock2)
    times2 = _grants_over(limiter2, clock2, 60, output_tokens=300)  # output debited after each call
    assert _max_in_window(times2, 60.0) * 300 <= 3000 + 300 * 2


def test_higher_priority_goes_first_when_saturated() -> None:
    clock = ManualClock()
    limiter = Limiter(BackendConfig(max_concurrency=1), clock)
    order: list[str] = []

    async def main() -> None:
        held = await limiter.acquire(2, 1)

        async def call(name: str, priority: int) -> None:
            permit = await limiter.acquire(priority, 1)
            order.append(name)
            await asyncio.sleep(0)
            limiter.release(permit)

        tasks = [asyncio.create_task(call(name, prio)) for name, prio in
                 (("low-1", 3), ("normal", 2), ("low-2", 3), ("critical", 0), ("high", 1))]
        await asyncio.sleep(0)
        assert limiter.waiting == 5 and limiter.active == 1
        limiter.release(held)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert order == ["critical", "high", "normal", "low-1", "low-2"]


def test_cancelled_waiter_leaves_the_queue_without_leaking_a_slot() -> None:
    clock = ManualClock()
    limiter = Limiter(BackendConfig(max_concurrency=1), clock)

    async def main() -> None:
        held = await limiter.acquire(2, 1)
        waiter = asyncio.create_task(limiter.acquire(0, 1))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        limiter.release(held)
        permit = await asyncio.wait_for(limiter.acquire(2, 1), 1)
        assert limiter.active == 1
        limiter.release(permit)
        assert limiter.active == 0 and limiter.waiting == 0

    asyncio.run(main())


def test_public_names_resolve_and_tokens_import_without_the_server_stack() -> None:
    import subprocess
    import sys

    import coordinator.gateway as gateway

    assert all(callable(getattr(gateway, name)) for name in gateway.__all__)
    code = ("import sys, coordinator.gateway.tokens; "
            "print(sorted(m for m in ('aiohttp', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
