"""The fake upstream itself: wire formats (checked by the real SDKs), scripting, gate, prompt caching."""

from __future__ import annotations

import json
import threading
from typing import Any

import anthropic
import httpx
import openai
import pytest

from coordinator.backends.prompt_cache import LOOKBACK_BLOCKS, PromptCache, count_tokens
from tests.fake_upstream import (CutStream, FakeUpstream, Hang, Malformed, Reply, Reset, Slow, Stall,
                                 wait_until)

BIG = "The shared context every task sees first. " * 120  # ~5 KB: past the 1024-token minimum
ANTHROPIC_EVENTS = ["message_start", "content_block_start", "ping", "content_block_delta",
                    "content_block_stop", "message_delta", "message_stop"]


def messages_body(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    """A minimal Anthropic Messages body."""
    return {"model": "claude-test", "max_tokens": 64, "messages": [{"role": "user", "content": text}], **extra}


def cached_body(system_text: str = BIG, question: str = "q1", **extra: Any) -> dict[str, Any]:
    """A body whose system block is a cache breakpoint."""
    system = [{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}]
    return messages_body(question, system=system, **extra)


def post(fake: FakeUpstream, path: str, body: Any, **kw: Any) -> httpx.Response:
    """POST JSON to the fake."""
    return httpx.post(fake.url + path, json=body, timeout=5, **kw)


def sse_events(text: str) -> list[str]:
    """The ``event:`` names of an SSE body, in order."""
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("event:")]


def test_default_answer_is_deterministic_and_recorded(fake_upstream: FakeUpstream) -> None:
    long = "x" * 100
    resp = post(fake_upstream, "/v1/messages?beta=true", messages_body(long, context_management={"a": 1}),
                headers={"anthropic-beta": "b1,b2", "x-api-key": "k"})
    assert resp.status_code == 200
    data = resp.json()
    assert data["content"][0]["text"] == "reply to: " + "x" * 40
    assert data["usage"]["input_tokens"] > 0 and data["usage"]["output_tokens"] > 0
    call = fake_upstream.calls[-1]
    assert (call.path, call.query) == ("/v1/messages", "beta=true")
    assert call.headers["anthropic-beta"] == "b1,b2"
    assert call.json["context_management"] == {"a": 1}


def test_anthropic_stream_has_the_api_event_sequence_and_the_sdk_parses_it(fake_upstream: FakeUpstream) -> None:
    raw = post(fake_upstream, "/v1/messages", messages_body("one two three", stream=True))
    assert raw.headers["content-type"].startswith("text/event-stream")
    names = sse_events(raw.text)
    deltas = names.count("content_block_delta")
    assert deltas >= 3
    assert names == ANTHROPIC_EVENTS[:3] + ["content_block_delta"] * deltas + ANTHROPIC_EVENTS[4:]
    client = anthropic.Anthropic(api_key="k", base_url=fake_upstream.url, max_retries=0)
    with client.messages.stream(model="m", max_tokens=64,
                                messages=[{"role": "user", "content": "one two three"}]) as stream:
        final = stream.get_final_message()
    plain = client.messages.create(model="m", max_tokens=64, messages=[{"role": "user", "content": "one two three"}])
    assert final.content[0].text == plain.content[0].text == "reply to: one two three"
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.stop_reason == "end_turn"


def test_openai_stream_and_body_parse_with_the_sdk(fake_upstream: FakeUpstream) -> None:
    client = openai.OpenAI(api_key="k", base_url=fake_upstream.url + "/v1", max_retries=0)
    plain = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi you"}])
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi you"}],
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert plain.choices[0].message.content == streamed == "reply to: hi you"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    raw = post(fake_upstream, "/v1/chat/completions", {"model": "m", "stream": True,
                                                        "messages": [{"role": "user", "content": "x"}]})
    assert raw.text.endswith("data: [DONE]\n\n")


def test_count_tokens_matches_the_estimate(fake_upstream: FakeUpstream) -> None:
    body = cached_body()
    resp = post(fake_upstream, "/v1/messages/count_tokens", body)
    assert resp.json() == {"input_tokens": count_tokens(body)}
    assert fake_upstream.cache_writes == 0


def test_script_runs_in_order_then_falls_back_to_default(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(429, headers={"retry-after": "7"}), Reply(400), Reply(200, json={"ok": 1}))
    first = post(fake_upstream, "/v1/messages", messages_body())
    assert (first.status_code, first.headers["retry-after"]) == (429, "7")
    assert first.json()["error"]["type"] == "rate_limit_error"
    second = post(fake_upstream, "/v1/chat/completions", messages_body())
    assert second.status_code == 400 and second.json()["error"]["type"] == "invalid_request_error"
    assert post(fake_upstream, "/v1/messages", messages_body()).json() == {"ok": 1}
    assert post(fake_upstream, "/v1/messages", messages_body()).json()["type"] == "message"


def test_failure_behaviours(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reset(), Malformed(), CutStream(after_events=2), Slow(0.01))
    with pytest.raises(httpx.TransportError):
        post(fake_upstream, "/v1/messages", messages_body())
    malformed = post(fake_upstream, "/v1/messages", messages_body())
    assert malformed.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        malformed.json()
    received: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", fake_upstream.url + "/v1/messages", json=messages_body(stream=True)) as resp:
            for chunk in resp.iter_raw():
                received.append(chunk)
    assert sse_events(b"".join(received).decode()) == ANTHROPIC_EVENTS[:2]
    assert post(fake_upstream, "/v1/messages", messages_body()).status_code == 200
    assert fake_upstream.cancelled == 0  # the fake's own drops are not client hang-ups


def test_hang_and_stall_count_a_client_hang_up_as_cancelled(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Hang(), Stall(after_events=1))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(fake_upstream.url + "/v1/messages", json=messages_body(), timeout=0.2)
    wait_until(lambda: fake_upstream.cancelled == 1, what="the hung call to be cancelled")
    with httpx.stream("POST", fake_upstream.url + "/v1/messages", json=messages_body(stream=True)) as resp:
        assert next(resp.iter_raw()).startswith(b"event: message_start")
    wait_until(lambda: fake_upstream.cancelled == 2, what="the stalled stream to be cancelled")
    assert fake_upstream.in_flight == 0


def test_gate_holds_default_answers_until_opened(fake_upstream: FakeUpstream) -> None:
    fake_upstream.gate.close()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(post(fake_upstream, "/v1/messages",
                                                                   messages_body()).status_code))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_until(lambda: fake_upstream.held == 3, what="3 held calls")
    assert results == [] and fake_upstream.in_flight == 3
    fake_upstream.gate.open()
    for thread in threads:
        thread.join(5)
    assert results == [200, 200, 200] and fake_upstream.held == 0


def test_prompt_cache_write_then_read(fake_upstream: FakeUpstream) -> None:
    first = post(fake_upstream, "/v1/messages", cached_body(question="q1")).json()["usage"]
    second = post(fake_upstream, "/v1/messages", cached_body(question="q2")).json()["usage"]
    assert first["cache_creation_input_tokens"] >= 1024 and first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == 0
    assert second["input_tokens"] == first["input_tokens"]  # only the uncached question is billed as input
    assert (fake_upstream.cache_writes, fake_upstream.cache_reads) == (1, 1)


def test_prompt_cache_needs_an_exact_prefix_and_the_minimum_length(fake_upstream: FakeUpstream) -> None:
    post(fake_upstream, "/v1/messages", cached_body(BIG))
    changed = post(fake_upstream, "/v1/messages", cached_body(BIG + ".")).json()["usage"]
    assert changed["cache_read_input_tokens"] == 0 and changed["cache_creation_input_tokens"] > 0
    short = post(fake_upstream, "/v1/messages", cached_body("short system")).json()["usage"]
    assert short["cache_creation_input_tokens"] == short["cache_read_input_tokens"] == 0
    tools_first = cached_body(tools=[{"name": "t", "description": "d", "input_schema": {"type": "object"}}])
    assert post(fake_upstream, "/v1/messages", tools_first).json()["usage"]["cache_read_input_tokens"] == 0


def test_stream_usage_reports_cache_tokens(fake_upstream: FakeUpstream) -> None:
    post(fake_upstream, "/v1/messages", cached_body())
    raw = post(fake_upstream, "/v1/messages", cached_body(stream=True)).text
    start = json.loads(raw.split("data: ", 2)[1].split("\n", 1)[0])
    assert start["message"]["usage"]["cache_read_input_tokens"] > 0


def test_more_than_four_breakpoints_is_a_400(fake_upstream: FakeUpstream) -> None:
    marked = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    body = messages_body(system=[marked] * 3, messages=[{"role": "user", "content": [marked, marked]}])
    resp = post(fake_upstream, "/v1/messages", body)
    assert resp.status_code == 400
    assert resp.json()["error"] == {"type": "invalid_request_error",
                                    "message": "A maximum of 4 blocks with cache_control may be provided. Found 5."}


def test_ttl_expires_and_a_read_refreshes_it() -> None:
    now = [0.0]
    cache = PromptCache(clock=lambda: now[0])
    assert cache.account(cached_body()).cache_creation_input_tokens > 0
    now[0] = 299.0
    assert cache.account(cached_body()).cache_read_input_tokens > 0  # refreshed: expires at 599
    now[0] = 598.0
    assert cache.account(cached_body()).cache_read_input_tokens > 0
    now[0] = 898.5
    assert cache.account(cached_body()).cache_read_input_tokens == 0  # 300.5 s after the last read


def test_one_hour_ttl_and_automatic_breakpoint() -> None:
    now = [0.0]
    cache = PromptCache(clock=lambda: now[0])
    body = messages_body(BIG, cache_control={"type": "ephemeral", "ttl": "1h"})
    assert cache.account(body).cache_creation_input_tokens == count_tokens(body)
    now[0] = 3000.0
    assert cache.account(body).cache_read_input_tokens == count_tokens(body)


def test_lookback_finds_an_earlier_prefix_within_twenty_blocks() -> None:
    cache = PromptCache()

    def history(turns: int) -> dict[str, Any]:
        msgs = [{"role": "user", "content": [{"type": "text", "text": BIG}]}]
        msgs += [{"role": "user", "content": [{"type": "text", "text": f"turn {i}"}]} for i in range(turns)]
        msgs[-1]["content"][0]["cache_control"] = {"type": "ephemeral"}
        return {"model": "m", "max_tokens": 8, "messages": msgs}

    first = cache.account(history(1))
    near = cache.account(history(5))  # breakpoint moved 4 blocks later: found by lookback
    assert near.cache_read_input_tokens == first.cache_creation_input_tokens
    far = cache.account(history(6 + LOOKBACK_BLOCKS))  # last write (turn 4) is 21+ blocks back
    assert far.cache_read_input_tokens == 0 and far.cache_creation_input_tokens > 0
    assert far.total == count_tokens(history(6 + LOOKBACK_BLOCKS))
