"""The context cache through a real gateway: breakpoints, the warm-up barrier, prefix routing."""

from __future__ import annotations

import asyncio
import copy

import anthropic
import httpx
import openai

from coordinator.gateway.context_cache import MAX_BREAKPOINTS, count_breakpoints
from tests.fake_upstream import FakeUpstream, await_until, fake_upstream  # noqa: F401 - fixture
from tests.gateway_support import start_gateway, user  # noqa: F401 - fixture

MODEL = "claude-sonnet-4-6"
# ~3,000 tokens by the fake's estimate (bytes / 4): well past the 1,024-token minimum.
SHARED = "You are one engineer of a fleet. Shared project context follows.\n" + "design notes line. " * 600


def test_n_concurrent_requests_sharing_a_new_prefix_write_it_once_and_read_it_n_minus_1_times(
        start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    n = 12
    fake_upstream.gate.close()

    async def main() -> list:
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.token, max_retries=0, timeout=30)
        calls = [asyncio.create_task(client.messages.create(model=MODEL, max_tokens=32, system=SHARED,
                                                            messages=user(f"task {i}"))) for i in range(n)]
        await await_until(lambda: gw.gateway.proxy.pending == n, 10, f"{n} requests in the gateway")
        # The barrier: only the first request with the new prefix reaches the provider; the
        # rest wait until its response starts (a real provider can only serve reads after that).
        # Once the leader is held at the upstream and the other n-1 are parked on the barrier's
        # event, none can move until the gate opens: the counts below are final, not a snapshot.
        barrier = gw.gateway.proxy.pipeline.barrier
        await await_until(lambda: fake_upstream.held == 1 and barrier.waiting == n - 1, 10,
                          f"the leader at the upstream and {n - 1} requests at the barrier")
        assert fake_upstream.held == 1 and len(fake_upstream.calls) == 1
        fake_upstream.gate.open()
        results = await asyncio.gather(*calls)
        await client.close()
        return results

    results = asyncio.run(main())
    assert len(fake_upstream.calls) == n
    assert (fake_upstream.cache_writes, fake_upstream.cache_reads) == (1, n - 1)
    assert sum(r.usage.cache_creation_input_tokens > 0 for r in results) == 1
    assert sum(r.usage.cache_read_input_tokens > 0 for r in results) == n - 1
    for call in fake_upstream.calls:
        assert call.json["system"][-1]["cache_control"] == {"type": "ephemeral"}
        assert count_breakpoints(call.json) <= MAX_BREAKPOINTS
    stats = gw.gateway.stats()
    assert stats["cache_write_tokens"] > 0 and stats["cache_read_tokens"] > 0 and stats["usd_saved"] > 0


def test_without_the_context_cache_every_request_pays_full_price(start_gateway, fake_upstream) -> None:
    gw = start_gateway(gateway={"context_cache": "off"})
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.token, max_retries=0)
    for i in range(3):
        client.messages.create(model=MODEL, max_tokens=32, system=SHARED, messages=user(f"task {i}"))
    assert (fake_upstream.cache_writes, fake_upstream.cache_reads) == (0, 0)
    assert "cache_control" not in str(fake_upstream.calls[0].json)


def test_a_long_history_gets_a_rolling_breakpoint_and_never_more_than_four(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "x " * 800}
               for i in range(7)]
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.token, max_retries=0)
    client.messages.create(model=MODEL, max_tokens=32, system=SHARED, messages=history,
                           tools=[{"name": "read", "description": "read a file",
                                   "input_schema": {"type": "object", "properties": {}}}])
    sent = fake_upstream.calls[-1].json
    assert count_breakpoints(sent) == 2 <= MAX_BREAKPOINTS
    assert sent["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert sent["messages"][:-1] == history[:-1]


def test_a_request_bringing_its_own_cache_control_reaches_the_upstream_as_it_came(
        start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    body = {"model": MODEL, "max_tokens": 32,
            "system": [{"type": "text", "text": SHARED}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "my own breakpoint", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}],
            "thinking": {"type": "disabled"}, "unknown_future_field": {"x": 1}}
    response = httpx.post(f"{gw.url}/v1/messages?beta=true", json=body,
                          headers={"x-api-key": gw.token, "anthropic-version": "2023-06-01",
                                   "anthropic-beta": "prompt-caching-2024-07-31,context-management-2025-06-27"})
    assert response.status_code == 200, response.text
    call = fake_upstream.calls[-1]
    assert call.json == body
    assert call.query == "beta=true"
    assert call.headers["anthropic-beta"] == "prompt-caching-2024-07-31,context-management-2025-06-27"
    assert call.headers["anthropic-version"] == "2023-06-01"


def test_claude_code_style_requests_differing_only_in_metadata_share_one_call(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    body = {"model": MODEL, "max_tokens": 64, "stream": True,
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "system", "content": "odd but allowed"}, {"role": "user", "content": "hi"}],
            "tools": [{"name": f"tool{i}", "input_schema": {"type": "object"}} for i in range(24)],
            "context_management": {"edits": []}, "output_config": {"effort": "high"},
            "metadata": {"user_id": "session-1"}}
    headers = {"x-api-key": gw.token, "anthropic-version": "2023-06-01", "anthropic-beta": "a,b,c"}
    first = httpx.post(f"{gw.url}/v1/messages?beta=true", json=body, headers=headers)
    other = copy.deepcopy(body)
    other["metadata"]["user_id"] = "session-2"
    second = httpx.post(f"{gw.url}/v1/messages?beta=true", json=other, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content and b"message_stop" in first.content
    assert (first.headers["x-coordinator-dedup"], second.headers["x-coordinator-dedup"]) == ("miss", "hit")
    assert len(fake_upstream.calls) == 1


def test_openai_requests_are_routed_by_prefix_to_the_same_server(start_gateway, fake_upstream) -> None:
    second = FakeUpstream().start()
    try:
        gw = start_gateway(upstream_url=[fake_upstream.url, second.url])
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.token, max_retries=0)
        # Ports are random, so which server a prefix hashes to is too: with 32 prefixes the
        # chance that all land on one server is 2**-31, not the 1/128 that 8 gave (a CI failure).
        for prefix in range(32):
            for task in range(2):
                client.chat.completions.create(model="gpt-4o-mini", messages=[
                    {"role": "system", "content": f"shared context {prefix}"},
                    {"role": "user", "content": f"task {task}"}])
        by_prefix: dict[str, set[str]] = {}
        for name, fake in (("one", fake_upstream), ("two", second)):
            for call in fake.calls:
                by_prefix.setdefault(call.json["messages"][0]["content"], set()).add(name)
        assert all(len(servers) == 1 for servers in by_prefix.values())  # each prefix stays on one server
        assert len(by_prefix) == 32 and fake_upstream.calls and second.calls  # and both servers are used
    finally:
        second.stop()
