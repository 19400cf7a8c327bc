"""Stream handling on its own: event framing, usage, and stream ⇄ body conversion that the SDKs accept."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

try:  # the anthropic SDK 2.x runs on httpx2; older ones on httpx
    import httpx2 as anthropic_http
except ImportError:  # pragma: no cover - depends on the installed SDK
    anthropic_http = httpx

from coordinator.backends.prompt_cache import PromptCache
from coordinator.backends.synthetic import synthesize
from coordinator.gateway.dialects import ANTHROPIC, OPENAI, dialect_for

PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}

TOOL_BODY = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "let me think", "signature": "sig=="},
        {"type": "text", "text": "I'll call a tool. ünïcode ✓"},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 120, "output_tokens": 40, "cache_creation_input_tokens": 0,
              "cache_read_input_tokens": 2048},
}
OPENAI_TOOL_BODY = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o",
    "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls",
                 "message": {"role": "assistant", "content": "calling", "refusal": None,
                             "tool_calls": [{"id": "call_1", "type": "function",
                                             "function": {"name": "f", "arguments": "{\"x\":1}"}}]}}],
    "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59,
              "prompt_tokens_details": {"cached_tokens": 32}},
}


def _synth(api: str, stream: bool, request: dict) -> object:
    return synthesize(api, PATHS[api], request, stream, message_id="id-1", cache=PromptCache())


@pytest.mark.parametrize("api", ["anthropic", "openai"])
def test_folding_a_real_stream_gives_the_body_the_api_would_have_sent(api: str) -> None:
    request = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "fold me please"}]}
    if api == "openai":
        request["stream_options"] = {"include_usage": True}
    body = json.loads(_synth(api, False, request).body)
    events = [event for event, _ in _synth(api, True, request).events]
    assert dialect_for(api).events_to_body(events) == body


def test_scanner_cuts_events_at_boundaries_whatever_the_chunking_and_reads_usage() -> None:
    request = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "one two three"}]}
    raw = b"".join(event for event, _ in _synth("anthropic", True, request).events)
    for size in (1, 7, 64, len(raw)):
        scanner = ANTHROPIC.scanner()
        out = []
        for start in range(0, len(raw), size):
            out += scanner.feed(raw[start:start + size])
        assert b"".join(out) == raw
        assert all(event.endswith(b"\n\n") for event in out)
        assert scanner.complete and scanner.usage.input_tokens > 0 and scanner.usage.output_tokens > 0


def test_scanner_strips_only_the_usage_chunk_a_client_did_not_ask_for() -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "x y"}],
               "stream_options": {"include_usage": True}}
    raw = b"".join(event for event, _ in _synth("openai", True, request).events)
    scanner = OPENAI.scanner(strip_usage_chunk=True)
    out = scanner.feed(raw)
    assert scanner.complete and scanner.usage.output_tokens > 0
    assert not any(b'"choices":[]' in event for event in out)
    assert out[-1] == b"data: [DONE]\n\n"


def test_scanner_reports_an_in_stream_error() -> None:
    scanner = ANTHROPIC.scanner()
    scanner.feed(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n')
    assert scanner.error == {"type": "overloaded_error", "message": "busy"} and not scanner.complete


def _sdk_stream(api: str, events: list[bytes]) -> object:
    """Feed events to the real SDK's streaming parser through a mock transport."""
    payload = b"".join(events)
    # The anthropic SDK runs on httpx2, the openai SDK on httpx: each gets a mock of its own kind.
    lib = anthropic_http if api == "anthropic" else httpx

    def handler(request: object) -> object:
        return lib.Response(200, content=payload, headers={"content-type": "text/event-stream"})

    http = lib.Client(transport=lib.MockTransport(handler))
    if api == "anthropic":
        client = anthropic.Anthropic(api_key="x", base_url="http://t", http_client=http, max_retries=0)
        with client.messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "q"}]) as s:
            return s.get_final_message()
    client = openai.OpenAI(api_key="x", base_url="http://t/v1", http_client=http, max_retries=0)
    return list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}],
                                               stream=True, stream_options={"include_usage": True}))


def test_unfolded_anthropic_body_is_rebuilt_exactly_by_the_sdk() -> None:
    events = ANTHROPIC.body_to_events(TOOL_BODY)
    final = _sdk_stream("anthropic", events)
    assert final.model_dump(exclude_none=True, exclude_unset=True)["content"] == TOOL_BODY["content"]
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 40
    assert final.usage.cache_read_input_tokens == 2048
    assert ANTHROPIC.events_to_body(events) == TOOL_BODY


def test_unfolded_openai_body_streams_through_the_sdk_and_folds_back() -> None:
    events = OPENAI.body_to_events(OPENAI_TOOL_BODY, include_usage=True)
    chunks = _sdk_stream("openai", events)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "calling" and chunks[-1].usage.prompt_tokens == 50
    assert OPENAI.events_to_body(events) == OPENAI_TOOL_BODY
    assert not any(b'"choices":[]' in e for e in OPENAI.body_to_events(OPENAI_TOOL_BODY))
