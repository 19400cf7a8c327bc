"""Upstream faults through the gateway: retried per policy, or a clean error in the API's own format."""

from __future__ import annotations

import asyncio

import anthropic
import httpx
import openai
import pytest

from coordinator.clock import ManualClock
from tests.fake_upstream import (CutStream, Hang, Malformed, Reply, Reset, await_until,  # noqa: F401
                                 fake_upstream, wait_until)
from tests.gateway_support import start_gateway, user  # noqa: F401 - fixture

MODEL = "claude-sonnet-4-6"
EXPECTED = "reply to: hello"


def _client(gw: object) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.token, max_retries=0, timeout=20)


def _ask(gw: object, text: str = "hello", **kwargs: object) -> object:
    return _client(gw).messages.create(model=MODEL, max_tokens=32, messages=user(text), **kwargs)


def test_429_with_retry_after_is_waited_out_then_succeeds(start_gateway, fake_upstream) -> None:
    clock = ManualClock()
    gw = start_gateway(clock=clock)
    fake_upstream.script(Reply(429, headers={"retry-after": "3"}))
    assert _ask(gw).content[0].text == EXPECTED
    assert len(fake_upstream.calls) == 2 and clock.slept == [3.0]


@pytest.mark.parametrize("fault", [Reply(500), Reply(529), Reset(), Malformed(), CutStream(2)],
                         ids=["500", "529", "reset", "malformed", "cut-body"])
def test_transient_faults_are_retried(start_gateway, fake_upstream, fault: object) -> None:
    gw = start_gateway(clock=ManualClock())
    fake_upstream.script(fault)
    assert _ask(gw).content[0].text == EXPECTED
    assert len(fake_upstream.calls) == 2


def test_a_hang_times_out_and_is_retried(start_gateway, fake_upstream) -> None:
    gw = start_gateway(anthropic={"timeout_s": 0.3})
    fake_upstream.script(Hang())
    assert _ask(gw).content[0].text == EXPECTED
    assert len(fake_upstream.calls) == 2
    wait_until(lambda: fake_upstream.cancelled == 1, 5, "the hung call to be abandoned")


def test_malformed_and_cut_streams_before_any_event_are_retried(start_gateway, fake_upstream) -> None:
    gw = start_gateway(clock=ManualClock())
    fake_upstream.script(Malformed(), CutStream(0))
    with _client(gw).messages.stream(model=MODEL, max_tokens=32, messages=user("hello")) as stream:
        assert stream.get_final_message().content[0].text == EXPECTED
    assert len(fake_upstream.calls) == 3


def test_a_stream_cut_midway_ends_with_an_api_error_and_is_not_cached(start_gateway, fake_upstream) -> None:
    gw = start_gateway(clock=ManualClock())
    fake_upstream.script(CutStream(3))
    with pytest.raises(anthropic.APIStatusError) as info:
        with _client(gw).messages.stream(model=MODEL, max_tokens=32, messages=user("hello")) as stream:
            stream.get_final_message()
    assert "stream broke" in str(info.value)
    assert len(fake_upstream.calls) == 1  # part of it reached the client: not retried
    assert _ask(gw).content[0].text == EXPECTED and len(fake_upstream.calls) == 2  # not served from cache


def test_openai_stream_cut_midway_raises_in_the_openai_sdk(start_gateway, fake_upstream) -> None:
    gw = start_gateway(clock=ManualClock())
    fake_upstream.script(CutStream(2))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.token, max_retries=0)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="gpt-4o-mini", messages=user("hello"), stream=True))


def test_a_final_error_reaches_every_waiter_and_is_not_cached(start_gateway, fake_upstream) -> None:
    # One concurrency slot, held by a gated "blocker" call: the 20 identical requests join one
    # flight that waits for the slot, so all of them are waiting before any attempt is made.
    gw = start_gateway(clock=ManualClock(), anthropic={"max_concurrency": 1, "max_retries": 2})
    fake_upstream.gate.close()

    async def main() -> list:
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.token, max_retries=0, timeout=20)
        blocker = asyncio.create_task(client.messages.create(model=MODEL, max_tokens=32, messages=user("blocker")))
        await await_until(lambda: fake_upstream.held == 1, 10, "the blocker at the upstream")
        tasks = [asyncio.create_task(client.messages.create(model=MODEL, max_tokens=32, messages=user("hello")))
                 for _ in range(20)]
        await await_until(lambda: gw.gateway.proxy.pending == 21, 10, "20 waiters behind the blocker")
        fake_upstream.script(Reply(500), Reply(503), Reply(500))
        fake_upstream.gate.open()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert (await blocker).content[0].text == "reply to: blocker"
        await client.close()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, anthropic.InternalServerError) for r in results), results
    assert {r.body["error"]["type"] for r in results} == {"api_error"}
    assert len(fake_upstream.calls) == 4  # the blocker, then one flight's three attempts
    assert gw.gateway.stats()["dedup_joined"] == 0  # failures are not counted as served
    assert _ask(gw).content[0].text == EXPECTED and len(fake_upstream.calls) == 5  # not cached


def test_fatal_upstream_errors_pass_through_in_the_api_format_without_retry(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    fake_upstream.script(Reply(400, json={"type": "error", "error": {"type": "invalid_request_error",
                                                                     "message": "max_tokens: too big"}}))
    with pytest.raises(anthropic.BadRequestError) as info:
        _ask(gw)
    assert info.value.body["error"]["message"] == "max_tokens: too big"
    assert len(fake_upstream.calls) == 1
    fake_upstream.script(Reply(404))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.token, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o-mini", messages=user("x"))


def test_sustained_outage_opens_the_breaker_then_one_probe_closes_it(start_gateway, fake_upstream) -> None:
    clock = ManualClock()
    gw = start_gateway(clock=clock, anthropic={"breaker_failures": 3, "breaker_open_s": 30.0, "max_retries": 0})
    fake_upstream.script(Reply(500), Reply(500), Reply(500))
    for n in range(3):
        with pytest.raises(anthropic.InternalServerError):
            _ask(gw, f"outage {n}")
    with pytest.raises(anthropic.APIStatusError) as info:
        _ask(gw, "while open")
    assert info.value.status_code == 503 and int(info.value.response.headers["retry-after"]) == 30
    assert len(fake_upstream.calls) == 3  # fast: the upstream was not called
    assert gw.gateway.stats()["backends"]["default"]["breaker"] == "open"
    clock.advance(30.0)
    assert gw.gateway.stats()["backends"]["default"]["breaker"] == "half_open"
    fake_upstream.gate.close()

    async def probe_and_second() -> tuple:
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.token, max_retries=0)
        probe = asyncio.create_task(client.messages.create(model=MODEL, max_tokens=32, messages=user("hello")))
        await await_until(lambda: fake_upstream.held == 1, 10, "the probe at the upstream")
        second = await asyncio.gather(client.messages.create(model=MODEL, max_tokens=32, messages=user("other")),
                                      return_exceptions=True)
        fake_upstream.gate.open()
        result = await probe
        await client.close()
        return result, second[0]

    probe, second = asyncio.run(probe_and_second())
    assert probe.content[0].text == EXPECTED
    assert isinstance(second, anthropic.APIStatusError) and second.status_code == 503  # one probe only
    assert gw.gateway.stats()["backends"]["default"]["breaker"] == "closed"
    assert _ask(gw, "after").content[0].text == "reply to: after"


def test_errors_of_the_gateway_itself_use_each_api_format(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    with pytest.raises(anthropic.AuthenticationError) as a_info:
        anthropic.Anthropic(base_url=gw.url, api_key="sk-wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=5, messages=user("x"))
    assert a_info.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-wrong", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=user("x"))
    with pytest.raises(anthropic.BadRequestError) as route_info:
        _ask_model(gw, "gpt-4o-mini")
    assert "[models]" in route_info.value.message and "oai" in route_info.value.message
    bad = httpx.post(f"{gw.url}/v1/chat/completions", content=b"{not json", headers={"authorization": f"Bearer {gw.token}"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert len(fake_upstream.calls) == 0


def _ask_model(gw: object, model: str) -> object:
    return _client(gw).messages.create(model=model, max_tokens=5, messages=user("x"))


def test_a_full_admission_queue_answers_429_with_retry_after(start_gateway, fake_upstream) -> None:
    gw = start_gateway(gateway={"max_queue": 2})
    fake_upstream.gate.close()

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(timeout=20) as client:
            headers = {"x-api-key": gw.token}
            held = [asyncio.create_task(client.post(f"{gw.url}/v1/messages", headers=headers,
                                                    json={"model": MODEL, "max_tokens": 5, "messages": user(t)}))
                    for t in ("a", "b")]
            await await_until(lambda: gw.gateway.proxy.pending == 2, 10, "2 queued requests")
            refused = await client.post(f"{gw.url}/v1/messages", headers=headers,
                                        json={"model": MODEL, "max_tokens": 5, "messages": user("c")})
            fake_upstream.gate.open()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            return refused

    refused = asyncio.run(main())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
