"""Dedup keys, the byte-bounded response cache, flights, breakpoints, the warm-up barrier, prices."""

from __future__ import annotations

import asyncio
import json
import re
import tracemalloc

import pytest

from coordinator.config import ModelAlias
from coordinator.gateway.accounting import Ledger, Usage, Who, price_for
from coordinator.clock import ManualClock
from coordinator.gateway.context_cache import (MAX_BREAKPOINTS, WarmupBarrier, add_breakpoints, count_breakpoints,
                                               pick_base_url, shared_prefix)
from coordinator.gateway.dedup import Flight, FlightTable, Reply, ResponseCache, dedup_key
from coordinator.gateway.dialects import ANTHROPIC, OPENAI
from coordinator.config import FleetConfig, FleetSection
from coordinator.errors import BudgetError

BODY = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


# --- keys ------------------------------------------------------------------------------------

def test_key_ignores_stream_metadata_and_key_order_but_not_what_changes_the_answer() -> None:
    headers = {"anthropic-version": "2023-06-01"}
    base = dedup_key(ANTHROPIC, "/v1/messages", "default", headers, BODY)
    same = {"messages": BODY["messages"], "max_tokens": 10, "model": "m", "stream": True,
            "metadata": {"user_id": "session-42"}}
    assert dedup_key(ANTHROPIC, "/v1/messages", "default", headers, same) == base
    assert len(base) == 16
    different = [
        dedup_key(ANTHROPIC, "/v1/messages", "other", headers, BODY),
        dedup_key(ANTHROPIC, "/v1/messages/count_tokens", "default", headers, BODY),
        dedup_key(ANTHROPIC, "/v1/messages", "default", {"anthropic-version": "2024-01-01"}, BODY),
        dedup_key(ANTHROPIC, "/v1/messages", "default", {**headers, "anthropic-beta": "x"}, BODY),
        dedup_key(ANTHROPIC, "/v1/messages", "default", headers, {**BODY, "max_tokens": 11}),
    ]
    assert base not in different and len(set(different)) == len(different)


# --- cache -----------------------------------------------------------------------------------

def _reply(size: int) -> Reply:
    return Reply(200, {}, False, body=b"x" * size)


def test_cache_expires_after_ttl() -> None:
    clock = ManualClock()
    cache = ResponseCache(ttl_s=10, max_bytes=1 << 20, clock=clock)
    assert cache.put(b"k", _reply(100))
    clock.advance(9.9)
    assert cache.get(b"k") is not None
    clock.advance(0.2)
    assert cache.get(b"k") is None and cache.bytes == 0


def test_cache_is_bounded_in_bytes_and_evicts_least_recently_used() -> None:
    one = _reply(1000).size
    cache = ResponseCache(ttl_s=60, max_bytes=one * 3, clock=ManualClock())
    for key in (b"a", b"b", b"c"):
        assert cache.put(key, _reply(1000))
    assert cache.get(b"a") is not None  # a is now most recent; b is the oldest
    cache.put(b"d", _reply(1000))
    assert cache.get(b"b") is None and cache.get(b"a") is not None and cache.get(b"d") is not None
    assert cache.bytes <= cache.max_bytes
    assert not cache.put(b"huge", _reply(one * 4)) and cache.get(b"huge") is None


def test_the_byte_bound_counts_at_least_the_memory_an_entry_really_takes() -> None:
    body = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 25, "completion_tokens": 3}}).encode()
    cache = ResponseCache(ttl_s=60, max_bytes=1 << 40, clock=ManualClock())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            cache.put(i.to_bytes(16, "big"), Reply(200, {"content-type": "application/json",
                                                        "x-request-id": f"req_{i:08d}"}, False,
                                                   body=bytes(body), usage=Usage(25, 3)))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.bytes >= used


# --- flights ---------------------------------------------------------------------------------

def test_flight_replays_then_follows_and_last_leaver_cancels() -> None:
    async def main() -> None:
        table = FlightTable()
        flight = Flight(b"k", True)
        table.add(flight)
        flight.task = asyncio.create_task(asyncio.sleep(60))
        flight.push(b"e1")
        flight.push(b"e2")
        seen: list[bytes] = []

        async def follow() -> None:
            async for data in flight.follow():
                seen.append(data)

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0)
        flight.push(b"e3")
        await asyncio.sleep(0)
        flight.finish(Reply(200, {}, True, events=list(flight.events)))
        await follower
        assert seen == [b"e1e2", b"e3"]
        flight2 = Flight(b"k2", False)
        table.add(flight2)
        flight2.task = asyncio.create_task(asyncio.sleep(60))
        flight2.waiters = 2
        table.leave(flight2)
        assert not flight2.task.cancelled() and table.get(b"k2") is flight2
        table.leave(flight2)
        await asyncio.sleep(0)
        assert flight2.task.cancelled() and table.get(b"k2") is None
        flight.task.cancel()

    asyncio.run(main())


# --- breakpoints -----------------------------------------------------------------------------

def test_breakpoints_go_after_the_shared_prefix_and_on_a_long_history() -> None:
    body = {"model": "m", "system": "S" * 100, "tools": [{"name": "t", "input_schema": {}}],
            "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": [{"type": "text", "text": "c"}]}]}
    out = add_breakpoints(body)
    assert out["system"] == [{"type": "text", "text": "S" * 100, "cache_control": {"type": "ephemeral"}}]
    assert out["messages"][-1]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert count_breakpoints(out) == 2 and count_breakpoints(body) == 0  # input untouched
    tools_only = add_breakpoints({"model": "m", "tools": [{"name": "a"}, {"name": "b"}],
                                  "messages": [{"role": "user", "content": "q"}]})
    assert tools_only["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert count_breakpoints(tools_only) == 1


def test_a_request_with_its_own_cache_control_is_left_exactly_as_it_came() -> None:
    body = {"model": "m", "system": [{"type": "text", "text": "s"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "q",
                                                       "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]}
    assert add_breakpoints(body) is body


def test_never_more_than_four_breakpoints_and_unknown_shapes_do_not_break_it() -> None:
    weird = {"model": "m", "system": [{"type": "thinking", "thinking": "x"}, {"type": "text", "text": ""}],
             "messages": [{"role": "system", "content": "odd role"}, {"role": "user", "content": 42},
                          {"role": "user", "content": [{"type": "redacted_thinking", "data": "z"}]}],
             "context_management": {"edits": []}}
    out = add_breakpoints(weird)
    assert count_breakpoints(out) == 0 and out["context_management"] == weird["context_management"]
    many = {"model": "m", "system": [{"type": "text", "text": f"s{i}"} for i in range(10)],
            "tools": [{"name": f"t{i}"} for i in range(10)],
            "messages": [{"role": "user", "content": f"m{i}"} for i in range(10)]}
    assert count_breakpoints(add_breakpoints(many)) <= MAX_BREAKPOINTS


def test_prefix_routing_is_stable_and_spreads_prefixes() -> None:
    urls = [f"http://127.0.0.1:{9000 + i}" for i in range(3)]
    picks = {pick_base_url(urls, shared_prefix(OPENAI, {"model": "m", "messages": [
        {"role": "system", "content": f"shared {n}"}, {"role": "user", "content": "task"}]})[0]) for n in range(30)}
    assert len(picks) == 3
    key = shared_prefix(OPENAI, {"model": "m", "messages": [{"role": "system", "content": "S"},
                                                            {"role": "user", "content": "t1"}]})[0]
    other_task = shared_prefix(OPENAI, {"model": "m", "messages": [{"role": "system", "content": "S"},
                                                                   {"role": "user", "content": "t2"}]})[0]
    assert key == other_task and pick_base_url(urls, key) == pick_base_url(list(reversed(urls)), key)
    assert pick_base_url(urls[:1], key) is None


def test_warmup_barrier_lets_one_go_and_releases_the_rest_when_it_starts() -> None:
    async def main() -> None:
        barrier = WarmupBarrier(wait_s=5, clock=ManualClock())
        assert await barrier.enter(b"p") is True
        waiters = [asyncio.create_task(barrier.enter(b"p")) for _ in range(5)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        barrier.release(b"p", warmed=True)
        assert await asyncio.gather(*waiters) == [False] * 5
        assert await barrier.enter(b"p") is False  # warm now: nobody waits

    asyncio.run(main())


def test_warmup_barrier_hands_over_when_the_warmer_fails_and_expires_after_ttl() -> None:
    async def main() -> None:
        clock = ManualClock()
        barrier = WarmupBarrier(wait_s=5, ttl_s=300, clock=clock)
        assert await barrier.enter(b"p") is True
        second = asyncio.create_task(barrier.enter(b"p"))
        await asyncio.sleep(0)
        barrier.release(b"p", warmed=False)
        assert await second is True  # the next one warms it instead
        barrier.release(b"p", warmed=True)
        clock.advance(301)
        assert await barrier.enter(b"p") is True

    asyncio.run(main())


# --- prices and budgets ----------------------------------------------------------------------

def test_prices_default_by_model_and_are_overridden_per_alias() -> None:
    sonnet = price_for("claude-sonnet-4-5-20250929")
    assert (sonnet.input, sonnet.output, sonnet.cache_write, sonnet.cache_read) == pytest.approx((3, 15, 3.75, 0.3))
    assert price_for("gpt-4o-mini").input == 0.15 and price_for("gpt-4o").input == 2.5
    custom = price_for("my-local-llama", ModelAlias(model="my-local-llama", input_usd_per_mtok=0,
                                                   output_usd_per_mtok=0, cache_read_usd_per_mtok=0,
                                                   cache_write_usd_per_mtok=0))
    assert custom.usd(Usage(1000, 1000, 1000, 1000)) == 0


def test_saved_counts_dedup_and_prompt_caching_and_budgets_refuse_with_the_fix() -> None:
    ledger = Ledger(FleetConfig(fleet=FleetSection(max_usd=1.0)))
    price = price_for("claude-sonnet-4-5")
    usage = Usage(input_tokens=100, output_tokens=1000, cache_read_tokens=10_000)
    who = Who("t1", "llm", "claude-sonnet-4-5", "default")
    cost = ledger.record_billed(who, usage, price)
    assert cost == pytest.approx((100 * 3 + 1000 * 15 + 10_000 * 0.3) / 1e6)
    ledger.record_shared(Who("t2"), "joined", usage, price)
    snap = ledger.snapshot()
    assert snap["dedup_joined"] == 1 and snap["tasks"]["t1"]["usd"] == pytest.approx(cost)
    uncached = (10_100 * 3 + 1000 * 15) / 1e6
    assert snap["usd_saved"] == pytest.approx((uncached - cost) + uncached)
    assert ledger.check_budget("t1", cost * 2, None) is None
    with pytest.raises(BudgetError, match="max_usd in its task file") as task_usd:
        ledger.check_budget("t1", cost / 2, None)
    assert (task_usd.value.scope, task_usd.value.limit) == ("task", cost / 2)
    with pytest.raises(BudgetError, match="max_tokens_budget"):
        ledger.check_budget("t1", None, 5000)
    ledger.record_billed(who, Usage(output_tokens=100_000), price)
    with pytest.raises(BudgetError, match=re.escape("[fleet] max_usd")) as fleet:
        ledger.check_budget("other", None, None)
    assert (fleet.value.scope, fleet.value.limit) == ("fleet", 1.0)
