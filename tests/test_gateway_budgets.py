"""Budgets by reservation (issue 14 item 8, issue 10), retry generations, retried attempts and the cache, echo at $0."""

from __future__ import annotations

import asyncio
import json

import anthropic
import httpx
import pytest

from coordinator.config import load_config
from coordinator.gateway.client import read_gateway
from coordinator.gateway.server import start_in_thread
from coordinator.gateway.tokens import task_token
from coordinator.report.status import gateway_status
from tests.fake_upstream import await_until, fake_upstream  # noqa: F401 - fixture
from tests.gateway_support import ENV, start_gateway, user  # noqa: F401

MODEL = "claude-sonnet-4-6"
SONNET_IN, SONNET_OUT = 3.0, 15.0  # USD per MTok


def _estimate_usd(body: dict) -> float:
    """The gateway's reservation for ``body``: input estimated at 4 bytes a token, plus max_tokens out."""
    size = len(json.dumps(body, separators=(",", ":")).encode())
    return (size // 4 * SONNET_IN + body["max_tokens"] * SONNET_OUT) / 1e6


def _flood(gw, fake, token: str, n: int) -> list[int]:
    """``n`` distinct requests at once, all held at the upstream until every one is admitted or refused."""
    fake.gate.close()

    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            tasks = [asyncio.create_task(client.post(
                f"{gw.url}/v1/messages", headers={"x-api-key": token},
                json={"model": MODEL, "max_tokens": 16, "messages": user(f"question {i:02d}")})) for i in range(n)]
            await await_until(lambda: sum(t.done() for t in tasks) + fake.held == n, 20, "every request decided")
            fake.gate.open()
            return [r.status_code for r in await asyncio.gather(*tasks)]

    return asyncio.run(main())


def test_50_concurrent_requests_overshoot_max_usd_by_at_most_one_estimate(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    limit = 0.002
    statuses = _flood(gw, fake_upstream, task_token(gw.token, "t", max_usd=limit), 50)
    one = _estimate_usd({"model": MODEL, "max_tokens": 16, "messages": user("question 00")})
    spent = gw.gateway.stats()["tasks"]["t"]["usd"]
    assert spent <= limit + one, f"billed ${spent} against a ${limit} budget"
    assert statuses.count(402) >= 40 and statuses.count(200) == len(fake_upstream.calls) >= 1


def test_50_concurrent_requests_overshoot_max_tokens_budget_by_at_most_one_estimate(start_gateway,
                                                                                   fake_upstream) -> None:
    gw = start_gateway()
    statuses = _flood(gw, fake_upstream, task_token(gw.token, "t", max_tokens=300), 50)
    row = gw.gateway.stats()["tasks"]["t"]
    used = row["input_tokens"] + row["output_tokens"] + row["cache_read_tokens"] + row["cache_write_tokens"]
    assert used <= 300 + 60  # one request: ~40 bytes / 4 in, 16 out
    assert statuses.count(402) >= 40


def test_the_fleet_budget_holds_under_concurrency_too(start_gateway, fake_upstream) -> None:
    gw = start_gateway(fleet={"max_usd": 0.002})
    statuses = _flood(gw, fake_upstream, gw.token, 50)  # the fleet token: no task budget, the fleet's
    one = _estimate_usd({"model": MODEL, "max_tokens": 16, "messages": user("question 00")})
    assert gw.gateway.stats()["usd"] <= 0.002 + one and statuses.count(402) >= 40


def test_a_request_whose_own_estimate_exceeds_what_is_left_is_refused_before_it_goes_out(start_gateway,
                                                                                        fake_upstream) -> None:
    gw = start_gateway()
    client = anthropic.Anthropic(base_url=gw.url, api_key=task_token(gw.token, "t", max_usd=0.01), max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model=MODEL, max_tokens=4000, messages=user("write a lot"))  # up to $0.06
    assert info.value.status_code == 402 and "may cost up to" in info.value.message
    assert "max_usd" in info.value.message and fake_upstream.calls == []
    assert client.messages.create(model=MODEL, max_tokens=100, messages=user("write a little")).content


def test_retry_starts_a_fresh_budget_with_a_new_generation(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    spend = {"model": MODEL, "max_tokens": 16}
    first = anthropic.Anthropic(base_url=gw.url, api_key=task_token(gw.token, "t", max_usd=0.00035), max_retries=0)
    first.messages.create(**spend, messages=user("one"))
    with pytest.raises(anthropic.APIStatusError) as info:
        first.messages.create(**spend, messages=user("two"))
    assert info.value.status_code == 402
    retried = task_token(gw.token, "t", max_usd=0.00035, generation=1)
    again = anthropic.Anthropic(base_url=gw.url, api_key=retried, max_retries=0)
    assert again.messages.create(**spend, messages=user("two")).content
    assert gw.gateway.stats()["budgets"]["t"]["generation"] == 1
    assert gw.gateway.stats()["tasks"]["t"]["requests"] == 2  # lifetime, over generations (a 402 is no request)


def test_a_second_attempt_bypasses_the_response_cache_but_still_joins_a_flight(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    body = {"model": MODEL, "max_tokens": 8, "messages": user("same question")}

    def ask(attempt: int) -> httpx.Response:
        token = task_token(gw.token, "t", attempt=attempt)
        return httpx.post(f"{gw.url}/v1/messages", json=body, headers={"x-api-key": token}, timeout=20)

    assert [ask(1).headers["x-coordinator-dedup"] for _ in range(2)] == ["miss", "hit"]
    assert ask(2).headers["x-coordinator-dedup"] == "miss" and len(fake_upstream.calls) == 2
    fake_upstream.gate.close()

    async def together() -> list[str]:
        async with httpx.AsyncClient(timeout=20) as client:
            token = task_token(gw.token, "t", attempt=3)
            post = lambda: asyncio.create_task(client.post(f"{gw.url}/v1/messages", json=body,  # noqa: E731
                                                           headers={"x-api-key": token}))
            first = post()
            await await_until(lambda: fake_upstream.held == 1, 10, "the third attempt's call")
            second = post()
            await await_until(lambda: gw.gateway.proxy.flights._flights and
                              next(iter(gw.gateway.proxy.flights._flights.values())).waiters == 2, 10, "the join")
            fake_upstream.gate.open()
            return [(await t).headers["x-coordinator-dedup"] for t in (first, second)]

    assert asyncio.run(together()) == ["miss", "joined"] and len(fake_upstream.calls) == 3


def test_the_echo_backend_costs_nothing_and_shows_the_would_be_price_apart(make_fleet) -> None:
    root = make_fleet('[backends.default]\nkind = "echo"\nlatency_ms = 0\n')
    gw = start_in_thread(load_config(root), ENV)
    try:
        client = anthropic.Anthropic(base_url=gw.url, api_key=task_token(gw.token, "t"), max_retries=0)
        client.messages.create(model="default", max_tokens=64, messages=user("hello there"))
        client.messages.create(model="default", max_tokens=64, messages=user("hello there"))  # a hit
        stats = gw.gateway.stats()
        assert stats["usd"] == 0 and stats["tasks"]["t"]["usd"] == 0
        assert stats["usd_would_be"] > 0 and stats["tasks"]["t"]["usd_would_be"] == stats["usd_would_be"]
        assert stats["usd_saved"] > 0  # what the hit saved, at the model's price
        status = gateway_status(load_config(root))  # `status --json` carries it
        assert read_gateway(load_config(root)) is not None and status["usd_would_be"] == pytest.approx(
            stats["usd_would_be"]) and status["usd"] == 0
    finally:
        gw.stop()
