"""Coalescing and cancellation through a real gateway, real SDK clients and the fake upstream."""

from __future__ import annotations

import asyncio
import json

import anthropic
import httpx
import openai

from coordinator.gateway.sse import parse_event
from tests.fake_upstream import FakeUpstream, await_until, fake_upstream, wait_until  # noqa: F401 - fixture
from tests.gateway_support import start_gateway, user  # noqa: F401 - fixture

N = 200
PROMPT = "summarise the design document"
EXPECTED_TEXT = "reply to: " + PROMPT[:40]


def _anthropic_async(gw: object) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.token, max_retries=0, timeout=30)


async def _hold_until_all_waiting(fake: FakeUpstream, gw: object, n: int) -> None:
    """With the upstream gate closed, wait until ``n`` clients wait on the gateway, then open it."""
    await await_until(lambda: gw.gateway.proxy.pending == n, 20, f"{n} requests waiting in the gateway")
    fake.gate.open()


def test_200_identical_non_streaming_requests_make_one_upstream_call(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    fake_upstream.gate.close()

    async def main() -> list:
        client = _anthropic_async(gw)
        calls = [client.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=64,
                                                          messages=user(PROMPT)) for _ in range(N)]
        results = await asyncio.gather(*calls, _hold_until_all_waiting(fake_upstream, gw, N))
        await client.close()
        return [(raw, await raw.parse()) for raw in results[:-1]]

    pairs = asyncio.run(main())
    raws = [raw for raw, _ in pairs]
    assert len(fake_upstream.calls) == 1
    messages = [message for _, message in pairs]
    assert all(m.content[0].text == EXPECTED_TEXT and m.stop_reason == "end_turn" for m in messages)
    assert len({m.id for m in messages}) == 1
    dedup = sorted(raw.headers["x-coordinator-dedup"] for raw in raws)
    assert dedup.count("miss") == 1 and dedup.count("joined") == N - 1
    stats = gw.gateway.stats()
    assert stats["requests"] == N and stats["upstream_calls"] == 1 and stats["dedup_joined"] == N - 1


async def _raw_stream(client: httpx.AsyncClient, gw: object, body: dict) -> tuple[str, bytes]:
    async with client.stream("POST", f"{gw.url}/v1/messages", json=body,
                             headers={"x-api-key": gw.token, "anthropic-version": "2023-06-01"}) as response:
        assert response.status_code == 200
        return response.headers["x-coordinator-dedup"], b"".join([c async for c in response.aiter_bytes()])


def test_200_identical_streaming_requests_make_one_call_and_every_client_gets_every_event(
        start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    fake_upstream.gate.close()
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": user(PROMPT), "stream": True}

    async def main() -> list:
        limits = httpx.Limits(max_connections=N + 10)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            results = await asyncio.gather(*[_raw_stream(client, gw, body) for _ in range(N)],
                                           _hold_until_all_waiting(fake_upstream, gw, N))
        return results[:-1]

    results = asyncio.run(main())
    assert len(fake_upstream.calls) == 1
    streams = {raw for _, raw in results}
    assert len(streams) == 1  # every client got the same bytes, in the same order
    events = [parse_event(e + b"\n\n") for e in streams.pop().strip().split(b"\n\n")]
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop" and "message_delta" in names
    text = "".join(json.loads(d)["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert text == EXPECTED_TEXT
    assert sorted(how for how, _ in results).count("miss") == 1
    stats = gw.gateway.stats()
    assert stats["upstream_calls"] == 1 and stats["dedup_joined"] == N - 1 and stats["usd_saved"] > 0


def _mixed(start_gateway, fake_upstream, leader_streams: bool) -> None:
    gw = start_gateway()
    fake_upstream.gate.close()
    kwargs = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": user(PROMPT)}

    async def ask(client: anthropic.AsyncAnthropic, stream: bool) -> tuple[bool, object]:
        if stream:
            async with client.messages.stream(**kwargs) as s:
                texts = [t async for t in s.text_stream]
                return True, (texts, await s.get_final_message())
        return False, await client.messages.create(**kwargs)

    async def main() -> list:
        client = _anthropic_async(gw)
        leader = asyncio.create_task(ask(client, leader_streams))
        await await_until(lambda: fake_upstream.held == 1, 10, "the leader's call at the upstream")
        rest = [ask(client, i % 2 == 0) for i in range(N - 1)]
        results = await asyncio.gather(leader, *rest, _hold_until_all_waiting(fake_upstream, gw, N))
        await client.close()
        return results[:-1]

    results = asyncio.run(main())
    assert len(fake_upstream.calls) == 1
    assert fake_upstream.calls[0].json.get("stream", False) is leader_streams
    for streamed, value in results:
        message = value[1] if streamed else value
        assert message.content[0].text == EXPECTED_TEXT and message.stop_reason == "end_turn"
        assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0
        if streamed:
            assert "".join(value[0]) == EXPECTED_TEXT
    assert {streamed for streamed, _ in results} == {True, False}


def test_mixed_streaming_and_not_with_a_streaming_leader_make_one_call(start_gateway, fake_upstream) -> None:
    _mixed(start_gateway, fake_upstream, leader_streams=True)


def test_mixed_streaming_and_not_with_a_non_streaming_leader_make_one_call(start_gateway, fake_upstream) -> None:
    _mixed(start_gateway, fake_upstream, leader_streams=False)


def test_openai_clients_mixed_streaming_share_one_call(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    fake_upstream.gate.close()
    kwargs = {"model": "gpt-4o-mini", "messages": user(PROMPT)}

    async def ask(client: openai.AsyncOpenAI, stream: bool) -> str:
        if not stream:
            return (await client.chat.completions.create(**kwargs)).choices[0].message.content
        chunks = [c async for c in await client.chat.completions.create(**kwargs, stream=True)]
        assert chunks[-1].choices[0].finish_reason == "stop"
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.token, max_retries=0, timeout=30)
        results = await asyncio.gather(*[ask(client, i % 2 == 1) for i in range(50)],
                                       _hold_until_all_waiting(fake_upstream, gw, 50))
        await client.close()
        return results[:-1]

    assert asyncio.run(main()) == [EXPECTED_TEXT] * 50
    assert len(fake_upstream.calls) == 1


def test_a_late_streaming_joiner_replays_the_events_so_far_then_follows_live(make_fleet) -> None:
    # The echo backend paces its stream (ms_per_token), so a joiner can arrive part-way through.
    from coordinator.config import load_config
    from coordinator.gateway.server import start_in_thread

    root = make_fleet("[backends.default]\nkind = \"echo\"\nlatency_ms = 0\nms_per_token = 40\n")
    gw = start_in_thread(load_config(root), {})
    body = {"model": "claude-sonnet-4-6", "max_tokens": 400, "stream": True,
            "messages": user(" ".join(f"w{i}" for i in range(40)))}  # ~40 deltas: 1.6 s of stream
    try:
        async def main() -> list:
            async with httpx.AsyncClient(timeout=30) as client:
                leader = asyncio.create_task(_raw_stream(client, gw, body))
                flights = gw.gateway.proxy.flights
                await await_until(lambda: any(len(f.events) >= 4 for f in list(flights._flights.values())),
                                  10, "the leader's stream to be part-way")
                joiner = await _raw_stream(client, gw, body)
                return [await leader, joiner]

        (how1, leader_bytes), (how2, joiner_bytes) = asyncio.run(main())
    finally:
        gw.stop()
    assert (how1, how2) == ("miss", "joined")
    assert joiner_bytes == leader_bytes and leader_bytes.rstrip().endswith(b'{"type":"message_stop"}')


def test_leader_hanging_up_does_not_cancel_the_call_for_its_followers(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    fake_upstream.gate.close()
    kwargs = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": user(PROMPT)}

    async def main() -> list:
        client = _anthropic_async(gw)
        leader = asyncio.create_task(client.messages.create(**kwargs))
        await await_until(lambda: fake_upstream.held == 1, 10, "the leader's call at the upstream")
        followers = [asyncio.create_task(client.messages.create(**kwargs)) for _ in range(5)]
        await await_until(lambda: gw.gateway.proxy.pending == 6, 10, "6 waiting clients")
        leader.cancel()  # the leader's client hangs up
        await await_until(lambda: gw.gateway.proxy.pending == 5, 10, "the gateway to notice the hang-up")
        assert fake_upstream.cancelled == 0 and fake_upstream.in_flight == 1
        fake_upstream.gate.open()
        results = await asyncio.gather(*followers)
        await client.close()
        return results

    messages = asyncio.run(main())
    assert [m.content[0].text for m in messages] == [EXPECTED_TEXT] * 5
    assert len(fake_upstream.calls) == 1 and fake_upstream.cancelled == 0


def test_every_client_hanging_up_cancels_the_upstream_call(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    fake_upstream.gate.close()
    kwargs = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": user(PROMPT)}

    async def main() -> None:
        client = _anthropic_async(gw)
        tasks = [asyncio.create_task(client.messages.create(**kwargs, stream=s)) for s in (False, True, False)]
        await await_until(lambda: gw.gateway.proxy.pending == 3 and fake_upstream.held == 1, 10, "3 waiters")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()

    asyncio.run(main())
    wait_until(lambda: fake_upstream.cancelled == 1, 10, "the upstream call to be cancelled")
    wait_until(lambda: len(gw.gateway.proxy.flights) == 0, 10, "the flight to be gone")
    assert gw.gateway.cache.get is not None and len(gw.gateway.cache) == 0  # nothing partial was cached
