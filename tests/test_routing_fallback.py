"""Fallback chains through a real gateway: two real fake upstreams, the real anthropic SDK as the client."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from coordinator.clock import ManualClock
from coordinator.gateway.tokens import task_token
from tests.fake_upstream import CutStream, Reply, fake_upstream  # noqa: F401 - fixture
from tests.gateway_support import ANTHROPIC_KEY, user
from tests.routing_support import ask, routed_gateway, routing_toml, second_upstream  # noqa: F401 - fixtures

EXPECTED = "reply to: hello"


def _toml(primary: str, spare: str, **main: object) -> str:
    return routing_toml({"default": {"base_url": primary, "max_retries": 2, "breaker_failures": 3, **main},
                         "spare": {"base_url": spare}},
                        {"default": {"backend": "default", "model": "claude-sonnet-4-6", "fallback": ["backup"]},
                         "backup": {"backend": "spare", "model": "claude-haiku-4-5"}})


def _metrics(gw) -> str:
    return httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {gw.token}"}).text


def _fallbacks(gw, reason: str) -> str:
    return f'coordinator_gateway_fallbacks_total{{from="default@default",reason="{reason}",to="backup@spare"}}'


def test_529_until_retries_run_out_is_answered_by_the_fallback_alias(routed_gateway, fake_upstream,
                                                                      second_upstream, caplog) -> None:
    gw = routed_gateway(_toml(fake_upstream.url, second_upstream.url), clock=ManualClock())
    # The upstream's error quotes the key: the fallback's log line must not.
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": f"busy ({ANTHROPIC_KEY})"}}
    fake_upstream.script(*[Reply(529, json=overloaded)] * 3)
    client = anthropic.Anthropic(base_url=gw.url, api_key=task_token(gw.token, "t1"), max_retries=0)
    raw = client.messages.with_raw_response.create(model="default", max_tokens=32, messages=user("hello"))
    assert raw.parse().content[0].text == EXPECTED
    assert raw.headers["x-coordinator-routed"] == "backup"
    assert len(fake_upstream.calls) == 3 and [c.json["model"] for c in second_upstream.calls] == ["claude-haiku-4-5"]
    stats = gw.gateway.stats()
    rows = stats["task_aliases"]["t1"]
    assert rows["default"]["requests"] == 1 and rows["default"]["upstream_calls"] == 3
    assert rows["default"]["output_tokens"] == 0 and rows["default"]["usd"] == 0
    assert rows["backup"]["upstream_calls"] == 1 and rows["backup"]["output_tokens"] > 0 and rows["backup"]["usd"] > 0
    assert stats["models"]["claude-haiku-4-5"]["output_tokens"] == rows["backup"]["output_tokens"]
    assert stats["backends"]["default"]["breaker"] == "open" and stats["backends"]["spare"]["breaker"] == "closed"
    assert f"{_fallbacks(gw, 'retries_exhausted')} 1.0" in _metrics(gw)
    hops = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(hops) == 1 and "default@default to backup@spare (retries_exhausted)" in hops[0]
    assert "busy ([redacted])" in hops[0] and ANTHROPIC_KEY not in caplog.text
    # While the circuit is open the primary is not called at all: the chain goes straight on.
    assert client.messages.create(model="default", max_tokens=32, messages=user("again")).content[0].text
    assert len(fake_upstream.calls) == 3 and len(second_upstream.calls) == 2
    assert f"{_fallbacks(gw, 'circuit_open')} 1.0" in _metrics(gw)


def test_a_client_error_from_the_primary_does_not_fall_back(routed_gateway, fake_upstream, second_upstream) -> None:
    gw = routed_gateway(_toml(fake_upstream.url, second_upstream.url))
    fake_upstream.script(Reply(400, json={"type": "error", "error": {"type": "invalid_request_error",
                                                                     "message": "prompt is too long"}}))
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.token, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="default", max_tokens=32, messages=user("hello"))
    assert info.value.body["error"]["message"] == "prompt is too long"
    assert info.value.response.headers["x-coordinator-routed"] == "default"
    assert len(fake_upstream.calls) == 1 and second_upstream.calls == []
    assert gw.gateway.stats()["backends"]["default"]["breaker"] == "closed"
    assert "coordinator_gateway_fallbacks_total{" not in _metrics(gw)


def test_a_stream_never_switches_backend_once_its_first_bytes_reached_the_client(routed_gateway, fake_upstream,
                                                                                 second_upstream) -> None:
    gw = routed_gateway(_toml(fake_upstream.url, second_upstream.url, max_retries=0), clock=ManualClock())
    fake_upstream.script(CutStream(3))
    cut = ask(gw, gw.token, stream=True)
    assert cut.status_code == 200 and cut.headers["x-coordinator-routed"] == "default"
    assert b"event: message_start" in cut.content and b"event: error" in cut.content
    assert b"message_stop" not in cut.content
    assert second_upstream.calls == []  # part of the answer was out: no other backend may finish it
    # Cut before its first event, the same stream does go to the fallback, invisibly.
    fake_upstream.script(CutStream(0))
    whole = ask(gw, gw.token, "hello", stream=True, temperature=0.5)
    assert whole.status_code == 200 and whole.headers["x-coordinator-routed"] == "backup"
    assert b"event: message_stop" in whole.content and b"event: error" not in whole.content
    assert len(second_upstream.calls) == 1 and second_upstream.calls[0].json["stream"] is True
