"""The Anthropic Messages API on the wire.

Streams are named events: ``message_start`` (with the input usage),
``content_block_start`` / ``content_block_delta`` / ``content_block_stop`` per
block, ``ping``, ``message_delta`` (stop reason, cumulative usage) and
``message_stop``; an ``error`` event may end a stream early. Errors are
``{"type": "error", "error": {"type", "message"}}``. Base URLs carry no "/v1"
("https://api.anthropic.com"). Prompt caching happens only where a request marks
a block with ``cache_control``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ...errors import MalformedEventError
from ..sse import encode_event, parse_event
from .base import Dialect, StreamScanner, TextAnswer, Usage, count, dumps, merge_delta, read_event


class AnthropicDialect(Dialect):
    """Messages and count_tokens, streamed as named events."""

    name = "anthropic"
    title = "the Anthropic Messages API"
    paths = ("/v1/messages", "/v1/messages/count_tokens")
    generation_path = "/v1/messages"
    key_headers = ("anthropic-version", "anthropic-beta")
    request_id_header = "request-id"
    final_markers = (b"event: message_stop", b"event: error")
    cache_marks = True
    error_types = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                   429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}

    def join_url(self, base_url: str, path: str, query: str = "") -> str:
        """Base URLs without "/v1": the path is appended whole; a trailing "/v1" is dropped, not doubled."""
        base = base_url.rstrip("/")
        base = base[:-3] if base.endswith("/v1") else base
        return f"{base}{path}" + (f"?{query}" if query else "")

    def message_id(self, tag: str, serial: str) -> str:
        """``msg_<tag>_<serial>``."""
        return f"msg_{tag}_{serial}"

    def error_payload(self, status: int, message: str) -> dict[str, Any]:
        """``{"type": "error", "error": {"type", "message"}}``."""
        kind = self.error_types.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def error_event(self, status: int, message: str) -> bytes:
        """An ``event: error``."""
        return encode_event("error", self.error_payload(status, message))

    def usage(self, fields: Mapping[str, Any] | None) -> Usage:
        """Input, output, cache-creation and cache-read tokens, as reported."""
        if not isinstance(fields, Mapping):
            return Usage()
        return Usage(input_tokens=count(fields.get("input_tokens")), output_tokens=count(fields.get("output_tokens")),
                     cache_write_tokens=count(fields.get("cache_creation_input_tokens")),
                     cache_read_tokens=count(fields.get("cache_read_input_tokens")))

    def model_list(self, models: list[tuple[str, str, int]]) -> dict[str, Any]:
        """Anthropic's paged list: ``data``, ``has_more``, ``first_id``, ``last_id``."""
        data = [{"type": "model", "id": model_id, "display_name": name,
                 "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))}
                for model_id, name, created in models]
        return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}

    def usage_fields(self, usage: Usage) -> dict[str, Any]:
        """The ``usage`` object, in the API's key order."""
        return {"input_tokens": usage.input_tokens, "cache_creation_input_tokens": usage.cache_write_tokens,
                "cache_read_input_tokens": usage.cache_read_tokens, "output_tokens": usage.output_tokens}

    def scan(self, raw: bytes, scanner: StreamScanner) -> bool:
        """Usage from ``message_start`` / ``message_delta``, the end from ``message_stop``, and errors."""
        if b"message_" not in raw and b"error" not in raw:
            return True  # content deltas and pings: nothing to read, no JSON parse
        event, payload = read_event(raw)
        kind = event.name or payload.get("type")
        if kind == "message_stop":
            scanner.complete = True
        elif kind in ("message_start", "message_delta", "error"):
            if kind == "error":
                scanner.error = payload.get("error") or {"type": "api_error", "message": event.data}
            usage = (payload.get("message") or {}).get("usage") if kind == "message_start" else payload.get("usage")
            if isinstance(usage, dict):
                scanner.usage_fields.update({k: v for k, v in usage.items() if v is not None})
        return True

    def is_valid_first_event(self, raw: bytes) -> bool:
        """A named event whose data is a JSON object."""
        try:
            event = parse_event(raw)
            event.json()
        except MalformedEventError:
            return False
        return event.name is not None

    def events_to_body(self, events: Iterable[bytes]) -> dict[str, Any]:
        """The message a finished stream stands for: blocks rebuilt from their deltas, usage merged."""
        message: dict[str, Any] = {}
        partial_json: dict[int, str] = {}
        for event in (read_event(raw)[1] for raw in events):
            kind = event.get("type")
            if kind == "message_start":
                message = dict(event.get("message") or {})
                message["content"] = []
            elif kind == "content_block_start":
                message["content"].append(dict(event.get("content_block") or {}))
            elif kind == "content_block_delta":
                _apply_block_delta(message["content"][event["index"]], event.get("delta") or {},
                                   partial_json, event["index"])
            elif kind == "content_block_stop" and event.get("index") in partial_json:
                text = partial_json.pop(event["index"])
                message["content"][event["index"]]["input"] = json.loads(text) if text else {}
            elif kind == "message_delta":
                message.update(event.get("delta") or {})
                message["usage"] = {**message.get("usage", {}),
                                    **{k: v for k, v in (event.get("usage") or {}).items() if v is not None}}
        return message

    def body_to_events(self, body: dict[str, Any], *, include_usage: bool = False) -> list[bytes]:
        """message_start, each block as start / deltas / stop, message_delta, message_stop."""
        usage = dict(body.get("usage") or {})
        start = {k: v for k, v in body.items() if k not in ("content", "stop_reason", "stop_sequence")}
        start.update(content=[], stop_reason=None, stop_sequence=None, usage={**usage, "output_tokens": 0})
        events = [encode_event("message_start", {"type": "message_start", "message": start})]
        for index, block in enumerate(body.get("content") or []):
            head, deltas = _split_block(block)
            events.append(encode_event("content_block_start",
                                       {"type": "content_block_start", "index": index, "content_block": head}))
            events += [encode_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                            "delta": d}) for d in deltas]
            events.append(encode_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        delta = {"stop_reason": body.get("stop_reason"), "stop_sequence": body.get("stop_sequence")}
        events.append(encode_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        events.append(encode_event("message_stop", {"type": "message_stop"}))
        return events

    def prefix_parts(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Tools and system: what every task of a fleet sends first."""
        return {"tools": body.get("tools"), "system": body.get("system")}

    def _message(self, answer: TextAnswer, output_tokens: int) -> dict[str, Any]:
        usage = Usage(answer.usage.input_tokens, output_tokens, answer.usage.cache_write_tokens,
                      answer.usage.cache_read_tokens)
        return {"id": answer.message_id, "type": "message", "role": "assistant", "model": answer.model,
                "content": [{"type": "text", "text": answer.text}],
                "stop_reason": "max_tokens" if answer.truncated else "end_turn", "stop_sequence": None,
                "usage": self.usage_fields(usage)}

    def text_body(self, answer: TextAnswer) -> bytes:
        """A message with one text block."""
        return dumps(self._message(answer, answer.usage.output_tokens)).encode()

    def text_events(self, answer: TextAnswer, *, include_usage: bool) -> list[tuple[bytes, bool]]:
        """The event sequence the API sends, a ping included; ``message_delta`` usage is cumulative."""
        message = self._message(answer, answer.usage.output_tokens)
        start = {**self._message(answer, 1), "content": [], "stop_reason": None}
        events = [(encode_event("message_start", {"type": "message_start", "message": start}), False),
                  (encode_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                        "content_block": {"type": "text", "text": ""}}), False),
                  (encode_event("ping", {"type": "ping"}), False)]
        events += [(encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                         "delta": {"type": "text_delta", "text": piece}}), True)
                   for piece in answer.pieces]
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        events += [(encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}), False),
                   (encode_event("message_delta", {"type": "message_delta", "delta": delta,
                                                   "usage": message["usage"]}), False),
                   (encode_event("message_stop", {"type": "message_stop"}), False)]
        return events


def _apply_block_delta(block: dict[str, Any], delta: dict[str, Any], partial_json: dict[int, str],
                       index: int) -> None:
    kind = delta.get("type")
    if kind == "input_json_delta":
        partial_json[index] = partial_json.get(index, "") + delta.get("partial_json", "")
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta.get("citation"))
    else:  # text_delta, thinking_delta, signature_delta and any future string delta
        merge_delta(block, delta)


def _split_block(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A content block's ``content_block_start`` form and the deltas that rebuild it."""
    kind = block.get("type")
    if kind == "text":
        head = {k: v for k, v in block.items() if k != "citations"}
        deltas = [{"type": "text_delta", "text": block.get("text", "")}]
        deltas += [{"type": "citations_delta", "citation": c} for c in block.get("citations") or []]
        return {**head, "text": ""}, deltas
    if kind == "thinking":
        deltas = [{"type": "thinking_delta", "thinking": block.get("thinking", "")}]
        if block.get("signature"):
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return {**block, "thinking": "", "signature": ""}, deltas
    if isinstance(block.get("input"), dict):  # tool_use, server_tool_use, mcp_tool_use
        text = json.dumps(block["input"], separators=(",", ":"), ensure_ascii=False)
        return {**block, "input": {}}, [{"type": "input_json_delta", "partial_json": text}]
    return dict(block), []
