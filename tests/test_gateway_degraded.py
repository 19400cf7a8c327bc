"""Bad input gets the API's own 400 JSON, a malformed event mid-stream breaks the stream, keys never leak (issue 14)."""

from __future__ import annotations

import json
import logging

import anthropic
import httpx
import pytest

from coordinator.gateway.tokens import task_token
from tests.fake_upstream import BadEvent, Reply, fake_upstream  # noqa: F401 - fixture
from tests.gateway_support import ANTHROPIC_KEY, start_gateway, user  # noqa: F401

MODEL = "claude-sonnet-4-6"
DEEP = 1500


def _deep_body() -> bytes:
    return (b'{"model": "m", "max_tokens": 8, "messages": [], "x": ' + b"[" * DEEP + b"]" * DEEP + b"}")


BAD_BODIES = {
    "nested-1500-deep": ("/v1/messages", {}, _deep_body()),
    "lone-surrogate": ("/v1/messages", {},
                       b'{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "a\\ud800b"}]}'),
    "stream_options-not-an-object": ("/v1/chat/completions", {},
                                     b'{"model": "gpt-4o-mini", "stream": true, "stream_options": "yes", '
                                     b'"messages": [{"role": "user", "content": "hi"}]}'),
    "gzip-header-on-a-plain-body": ("/v1/messages", {"content-encoding": "gzip"},
                                    b'{"model": "m", "max_tokens": 8, "messages": []}'),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_bad_bodies_get_the_apis_own_400_json(start_gateway, fake_upstream, case: str) -> None:
    gw = start_gateway()
    path, headers, body = BAD_BODIES[case]
    answer = httpx.post(gw.url + path, content=body, timeout=20,
                        headers={"x-api-key": gw.token, "content-type": "application/json", **headers})
    assert answer.status_code == 400 and answer.headers["content-type"].startswith("application/json")
    error = answer.json()
    if path == "/v1/messages":
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    else:
        assert error["error"]["type"] == "invalid_request_error" and "stream_options" in error["error"]["message"]
    assert fake_upstream.calls == []
    emoji = json.dumps({"model": MODEL, "max_tokens": 8, "messages": user("a \U0001F600")}).encode()  # \ud83d\ude00
    ok = httpx.post(gw.url + "/v1/messages", content=emoji, headers={"x-api-key": gw.token}, timeout=20)
    assert ok.status_code == 200  # a surrogate *pair* (an emoji, ASCII-escaped) is fine


@pytest.mark.parametrize("raw", [b"data: {this is not json\n\n",
                                 b'event: content_block_delta\ndata: {"x": "\xff"}\n\n'],
                         ids=["non-json", "invalid-utf8"])
def test_a_malformed_event_mid_stream_ends_the_stream_with_an_error_bills_usage_and_is_not_cached(
        start_gateway, fake_upstream, raw: bytes) -> None:
    gw = start_gateway()
    fake_upstream.script(BadEvent(raw, after_events=2))
    body = {"model": MODEL, "max_tokens": 16, "stream": True, "messages": user("stream me")}
    headers = {"x-api-key": task_token(gw.token, "t")}
    with httpx.stream("POST", gw.url + "/v1/messages", json=body, headers=headers, timeout=20) as answer:
        received = answer.read()
    assert raw not in received
    events = [e for e in received.split(b"\n\n") if e.strip()]
    assert events[0].startswith(b"event: message_start") and events[-1].startswith(b"event: error")
    assert b"malformed event" in events[-1] and b"message_stop" not in received
    fake_upstream.script(BadEvent(raw, after_events=3))
    with pytest.raises(anthropic.APIStatusError):  # the SDK raises the error event, as a real broken stream
        with anthropic.Anthropic(base_url=gw.url, api_key=gw.token, max_retries=0).messages.stream(
                model=MODEL, max_tokens=16, messages=user("stream me too")) as stream:
            stream.until_done()
    assert gw.gateway.stats()["tasks"]["t"]["input_tokens"] > 0  # usage so far (message_start) is billed
    again = httpx.post(gw.url + "/v1/messages", json={**body, "stream": False}, headers=headers, timeout=20)
    assert again.headers["x-coordinator-dedup"] == "miss" and again.status_code == 200  # nothing was cached


def test_an_upstream_echoing_the_key_in_its_401_never_passes_it_on(start_gateway, fake_upstream, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    gw = start_gateway()
    echoed = {"type": "error",
              "error": {"type": "authentication_error", "message": f"invalid x-api-key {ANTHROPIC_KEY}"}}
    fake_upstream.script(Reply(401, json=echoed))
    with pytest.raises(anthropic.AuthenticationError) as info:
        anthropic.Anthropic(base_url=gw.url, api_key=task_token(gw.token, "t"), max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=user("hi"))
    assert ANTHROPIC_KEY not in json.dumps(info.value.body) and ANTHROPIC_KEY not in info.value.message
    assert "[redacted]" in info.value.message
    logged = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    assert "upstream answered 401" in logged and ANTHROPIC_KEY not in logged
