"""Wire dialects on their own: paths, header rules, SSE parsing, usage, stream ⇄ body.

``DialectContract`` holds what every dialect must do, and is run against each one
(huey's ``StorageTests`` pattern); each subclass supplies its API's samples.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any, ClassVar

import pytest

from coordinator.errors import MalformedEventError, RetryableError
from coordinator.gateway.dialects import (ANTHROPIC, DEFAULT_DIALECT, DIALECTS, OPENAI, Dialect, TextAnswer, Usage,
                                          dialect_for, dialect_for_path)
from coordinator.gateway.sse import Event, EventSplitter, encode_event, iter_events, parse_event
from coordinator.runners.llm import read_stream

CLIENT_HEADERS = {"Anthropic-Version": "2023-06-01", "anthropic-beta": "b1,b2", "x-api-key": "client-token",
                  "Authorization": "Bearer client-token", "host": "127.0.0.1", "content-length": "12",
                  "content-type": "application/json", "connection": "keep-alive", "accept-encoding": "gzip",
                  "x-coordinator-priority": "3", "x-coordinator-cache": "no-store", "user-agent": "sdk/1.0",
                  "x-stainless-lang": "python"}
UPSTREAM_HEADERS = {"Request-Id": "req_1", "x-request-id": "req_2", "anthropic-ratelimit-requests-remaining": "9",
                    "content-type": "application/json", "content-length": "99", "content-encoding": "gzip",
                    "transfer-encoding": "chunked", "connection": "keep-alive", "date": "today", "server": "x",
                    "set-cookie": "a=b", "via": "proxy", "alt-svc": "h3"}
USAGE = Usage(input_tokens=100, output_tokens=7, cache_write_tokens=0, cache_read_tokens=32)


class DialectContract:
    """What every dialect must do; subclasses set ``dialect`` and their API's samples."""

    dialect: ClassVar[Dialect]
    usage_json: ClassVar[dict[str, Any]]  # this API's usage object for USAGE
    request: ClassVar[dict[str, Any]]  # a minimal request body
    final_event: ClassVar[bytes]

    def stream(self, text: str = "one two three") -> list[bytes]:
        answer = TextAnswer("id-1", "m", text, USAGE)
        return [event for event, _ in self.dialect.text_events(answer, include_usage=True)]

    # Registry and paths

    def test_is_registered_under_its_name_and_owns_its_paths(self) -> None:
        assert dialect_for(self.dialect.name) is self.dialect and DIALECTS[self.dialect.name] is self.dialect
        assert self.dialect.generation_path in self.dialect.paths
        for path in self.dialect.paths:
            assert path.startswith("/v1/") and dialect_for_path(path) is self.dialect

    def test_base_url_and_path_join_without_doubling_the_version(self) -> None:
        for base in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"):
            url = self.dialect.join_url(base, self.dialect.generation_path, "beta=true")
            assert url == f"http://h:1{self.dialect.generation_path}?beta=true"

    # Header rules

    def test_credentials_framing_and_coordinator_headers_never_go_upstream(self) -> None:
        sent = self.dialect.forward_headers(CLIENT_HEADERS)
        assert sent == {"anthropic-version": "2023-06-01", "anthropic-beta": "b1,b2", "user-agent": "sdk/1.0",
                        "x-stainless-lang": "python"}

    def test_request_ids_and_rate_limits_come_back_but_framing_does_not(self) -> None:
        assert self.dialect.returned_headers(UPSTREAM_HEADERS) == {
            "request-id": "req_1", "x-request-id": "req_2", "anthropic-ratelimit-requests-remaining": "9"}

    def test_only_its_key_headers_change_the_dedup_key(self) -> None:
        values = self.dialect.key_header_values(CLIENT_HEADERS | {"anthropic-version": "2023-06-01"})
        assert len(values) == len(self.dialect.key_headers)
        assert self.dialect.key_header_values({"user-agent": "other"}) == [""] * len(self.dialect.key_headers)

    # Errors

    def test_errors_render_as_json_and_as_an_event_the_stream_ends_with(self) -> None:
        body = json.loads(self.dialect.error_body(429, "slow down"))
        assert body["error"]["message"] == "slow down" and body["error"]["type"]
        event = self.dialect.error_event(529, "busy")
        assert parse_event(event).json() == self.dialect.error_payload(529, "busy")
        assert self.dialect.is_stream_end(event) == (event.startswith(b"event: error"))

    # SSE parsing

    def test_a_synthesized_stream_scans_complete_with_its_usage_whatever_the_chunking(self) -> None:
        raw = b"".join(self.stream())
        for size in (1, 5, len(raw)):
            scanner = self.dialect.scanner()
            out = [event for start in range(0, len(raw), size) for event in scanner.feed(raw[start:start + size])]
            assert b"".join(out) == raw and scanner.complete
            assert scanner.usage == USAGE
        assert self.dialect.is_valid_first_event(self.stream()[0])
        assert self.dialect.is_stream_end(raw[-256:]) and not self.dialect.is_stream_end(raw[:-len(self.final_event)])

    def test_a_non_json_data_line_is_forwarded_read_as_nothing_and_rejected_as_a_first_event(self) -> None:
        garbage = b"data: {this is not json\n\n"
        scanner = self.dialect.scanner()
        assert scanner.feed(garbage) == [garbage] and not scanner.complete and scanner.error is None
        assert not self.dialect.is_valid_first_event(garbage)
        with pytest.raises(MalformedEventError, match="not JSON"):
            parse_event(garbage).json()

    def test_invalid_utf8_is_a_clear_error_and_never_a_crash(self) -> None:
        broken = b'event: message_delta\ndata: {"usage": {"output_tokens": 1}, "x": "\xff\xfe"}\n\n'
        with pytest.raises(MalformedEventError, match="not UTF-8") as caught:
            parse_event(broken)
        assert isinstance(caught.value, RetryableError) and caught.value.status == 502
        assert caught.value.event.startswith(b"event: message_delta")
        scanner = self.dialect.scanner()
        assert scanner.feed(broken) == [broken] and scanner.usage == Usage()
        assert not self.dialect.is_valid_first_event(broken)

    # Usage

    def test_usage_from_a_usage_object_a_body_and_raw_bytes(self) -> None:
        assert self.dialect.usage(self.usage_json) == USAGE
        assert self.dialect.usage_fields(USAGE) == self.usage_json
        assert self.dialect.usage(None) == Usage() and self.dialect.usage({"junk": "x"}) == Usage()
        body = json.loads(self.dialect.text_body(TextAnswer("id-1", "m", "hi", USAGE)))
        assert self.dialect.usage_from_body(body) == USAGE
        assert self.dialect.usage_from_body_bytes(json.dumps(body, indent=2).encode()) == USAGE
        with pytest.raises(RetryableError, match="malformed body"):
            self.dialect.usage_from_body_bytes(b"<html>upstream proxy error</html>")

    # Folding

    def test_a_stream_folds_into_the_body_and_the_body_unfolds_back(self) -> None:
        answer = TextAnswer("id-1", "m", "fold me please", USAGE)
        body = json.loads(self.dialect.text_body(answer))
        events = [event for event, _ in self.dialect.text_events(answer, include_usage=True)]
        folded = self.dialect.events_to_body(events)
        assert folded == body
        assert self.dialect.events_to_body(self.dialect.body_to_events(body, include_usage=True)) == body

    def test_folding_skips_events_it_cannot_read(self) -> None:
        answer = TextAnswer("id-1", "m", "still whole", USAGE)
        events = [event for event, _ in self.dialect.text_events(answer, include_usage=True)]
        noisy = [events[0], b"data: {not json\n\n", b"data: \xff\n\n", *events[1:]]
        assert self.dialect.events_to_body(noisy) == self.dialect.events_to_body(events)

    def test_stream_usage_is_asked_for_when_the_request_does_not(self) -> None:
        asked = self.dialect.with_stream_usage(dict(self.request))
        assert self.dialect.streams_usage(asked)


class TestAnthropic(DialectContract):
    dialect = ANTHROPIC
    usage_json = {"input_tokens": 100, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 32,
                  "output_tokens": 7}
    request = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}]}
    final_event = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'

    def test_shape_of_its_errors_and_its_stream_markers(self) -> None:
        assert json.loads(ANTHROPIC.error_body(402, "spent")) == {
            "type": "error", "error": {"type": "billing_error", "message": "spent"}}
        assert ANTHROPIC.error_event(529, "busy").startswith(b"event: error\n")
        assert ANTHROPIC.key_headers == ("anthropic-version", "anthropic-beta") and ANTHROPIC.cache_marks

    def test_a_named_event_is_required_first_and_an_error_event_is_read(self) -> None:
        assert not ANTHROPIC.is_valid_first_event(b'data: {"type":"message_start"}\n\n')
        scanner = ANTHROPIC.scanner()
        scanner.feed(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"b"}}\n\n')
        assert scanner.error == {"type": "overloaded_error", "message": "b"} and not scanner.complete

    def test_the_stream_always_carries_usage(self) -> None:
        assert ANTHROPIC.streams_usage(self.request) and ANTHROPIC.with_stream_usage(self.request) == self.request

    def test_the_dedup_key_headers_are_version_and_beta(self) -> None:
        assert ANTHROPIC.key_header_values(CLIENT_HEADERS | {"anthropic-version": "v"}) == ["v", "b1,b2"]


class TestOpenAI(DialectContract):
    dialect = OPENAI
    usage_json = {"prompt_tokens": 132, "completion_tokens": 7, "total_tokens": 139,
                  "prompt_tokens_details": {"cached_tokens": 32}}
    request = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True,
               "stream_options": {"other": 1}}
    final_event = b"data: [DONE]\n\n"

    def test_shape_of_its_errors_and_its_stream_markers(self) -> None:
        assert json.loads(OPENAI.error_body(402, "spent")) == {
            "error": {"message": "spent", "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
        assert OPENAI.error_event(500, "x").startswith(b"data: {")
        assert OPENAI.key_headers == () and not OPENAI.cache_marks

    def test_done_ends_a_stream_and_may_even_come_first(self) -> None:
        scanner = OPENAI.scanner()
        assert scanner.feed(b"data: [DONE]\n\n") == [b"data: [DONE]\n\n"] and scanner.complete
        assert OPENAI.is_valid_first_event(b"data: [DONE]\n\n")
        content = OPENAI.scanner()
        content.feed(b'data: {"choices":[{"index":0,"delta":{"content":"[DONE]"}}]}\n\n')
        assert not content.complete  # the words inside a chunk are not the marker

    def test_the_usage_chunk_is_kept_from_a_client_that_did_not_ask(self) -> None:
        events = self.stream()
        scanner = OPENAI.scanner(strip_usage_chunk=True)
        out = scanner.feed(b"".join(events))
        assert len(out) == len(events) - 1 and not any(b'"choices":[]' in e for e in out)
        assert scanner.usage == USAGE

    def test_stream_usage_is_added_to_the_clients_stream_options(self) -> None:
        assert not OPENAI.streams_usage(self.request)
        assert OPENAI.with_stream_usage(self.request)["stream_options"] == {"other": 1, "include_usage": True}
        assert self.request["stream_options"] == {"other": 1}  # the client's body is not modified

    def test_a_base_url_with_its_own_path_keeps_it(self) -> None:
        assert OPENAI.join_url("http://h:1/api/v1", "/v1/chat/completions") == "http://h:1/api/v1/chat/completions"


# --- the registry ----------------------------------------------------------------------------

def test_unknown_names_and_paths() -> None:
    with pytest.raises(ValueError, match="known: anthropic, openai"):
        dialect_for("cohere")
    assert dialect_for_path("/v1/completions") is OPENAI and dialect_for_path("/v1/chat/x") is OPENAI
    assert dialect_for_path("/v1/nothing") is DEFAULT_DIALECT is ANTHROPIC


def test_dialect_modules_are_standard_library_only() -> None:
    code = ("import sys, coordinator.gateway.dialects, coordinator.runners.llm; "
            "print(sorted({'aiohttp', 'anthropic', 'httpx', 'httpx2', 'openai', 'asyncio'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the SSE parser ----------------------------------------------------------------------------

def test_parse_event_reads_names_multiline_data_crlf_and_ignores_comments() -> None:
    assert parse_event(b"event: ping\r\ndata: {}\r\n\r\n") == Event("ping", "{}")
    assert parse_event(b": a comment\ndata:one\ndata:  two\nretry: 5\n\n") == Event(None, "one\n two")
    assert parse_event(encode_event("x", {"a": "é"})) == Event("x", '{"a":"é"}')


def test_event_json_needs_an_object() -> None:
    with pytest.raises(MalformedEventError, match="not a JSON object"):
        Event(None, "[1, 2]").json()


def test_the_splitter_keeps_partial_events_until_their_blank_line() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\n") == []
    assert splitter.feed(b"\n\n\ndata: 2\r\n\r") == [b"data: 1\n\n"]
    assert splitter.feed(b"\n") == [b"data: 2\n\n"]


def test_iter_events_reads_lines_and_skips_events_without_data() -> None:
    lines = [b"event: ping\n", b"\n", b"event: a\r\n", b"data: {\"x\": 1}\r\n", b"\r\n", b"data: 2\n", b"\n"]
    assert list(iter_events(lines)) == [Event("a", '{"x": 1}'), Event(None, "2")]
    with pytest.raises(MalformedEventError, match="not UTF-8"):
        list(iter_events([b"data: \xc3\x28\n", b"\n"]))


# --- the llm runner reads the gateway's stream with the same parser ------------------------------

def _read(raw: bytes) -> tuple[str, dict[str, Any], str | None]:
    return read_stream(io.BytesIO(raw), io.StringIO(), lambda: None)


def test_the_llm_runner_reads_a_stream_and_reports_malformed_ones_without_crashing() -> None:
    answer = TextAnswer("id-1", "m", "hello there", USAGE)
    good = b"".join(event for event, _ in ANTHROPIC.text_events(answer, include_usage=True))
    text, usage, error = _read(good)
    assert (text, error) == ("hello there", None) and ANTHROPIC.usage(usage) == USAGE
    start = good[:good.index(b"\n\n") + 2]
    for bad, why in ((b"data: {not json\n\n", "not JSON"), (b"data: \xff\n\n", "not UTF-8")):
        text, usage, error = _read(start + bad)
        assert error is not None and error.startswith("the gateway sent a malformed stream") and why in error
    assert _read(start)[2] == "stream ended before message_stop"
