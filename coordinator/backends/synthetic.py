"""Deterministic answers in the Anthropic and OpenAI wire formats.

The echo backend and the tests' fake upstream both answer with ``synthesize``, so
one piece of code owns the exact bytes real SDKs must parse: Anthropic's SSE event
sequence (message_start, content_block_start, ping, content_block_delta...,
content_block_stop, message_delta, message_stop) and OpenAI's ``data: {...}``
chunks ending in ``data: [DONE]``. Built from plain dicts and ``json`` because the
gateway benchmark runs through this code on every request.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .prompt_cache import CacheControlError, CacheUsage, PromptCache, count_tokens

_WORDS = re.compile(r"\s*\S+\s*|\s+")

ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         500: "api_error", 504: "timeout_error", 529: "overloaded_error"}
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                      404: "not_found_error", 429: "rate_limit_error"}


@dataclass
class Answer:
    """A synthesized upstream answer: a JSON body, or SSE events (bytes, is_delta)."""

    status: int
    body: bytes | None = None
    events: list[tuple[bytes, bool]] = field(default_factory=list)
    output_tokens: int = 0

    @property
    def is_stream(self) -> bool:
        """Whether the answer is an SSE stream."""
        return self.body is None


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # built once, not per json.dumps call


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def estimate_text_tokens(text: str) -> int:
    """Tokens of generated text, estimated like prompts: ceil(utf-8 bytes / 4), at least 1."""
    return max(1, -(-len(text.encode()) // 4))


def error_body(api: str, status: int, message: str, error_type: str | None = None) -> bytes:
    """The error JSON each API uses, for ``status``."""
    if api == "anthropic":
        kind = error_type or ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return _dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    kind = error_type or OPENAI_ERROR_TYPES.get(status, "server_error")
    return _dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message (string content or its text blocks), or ""."""
    for message in reversed(body.get("messages") or ()):
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(part.get("text", "") for part in content
                           if isinstance(part, Mapping) and part.get("type") == "text")
    return ""


def _reply_text(body: Mapping[str, Any], prefix: str, cap_chars: int, max_tokens: Any) -> tuple[str, bool]:
    """The answer text and whether ``max_tokens`` cut it short."""
    text = prefix + " ".join(last_user_text(body).split())[:cap_chars]
    if isinstance(max_tokens, int) and max_tokens > 0 and estimate_text_tokens(text) > max_tokens:
        cut = text.encode()[: max_tokens * 4].decode(errors="ignore")
        return cut, True
    return text, False


def synthesize(api: str, path: str, body: Any, stream: bool, *, message_id: str, cache: PromptCache,
               prefix: str = "echo: ", cap_chars: int = 200) -> Answer:
    """Answer ``body`` deterministically as ``api`` would, with usage and prompt-cache accounting."""
    if not isinstance(body, Mapping) or not isinstance(body.get("messages"), list):
        return Answer(400, error_body(api, 400, "messages: Field required"))
    if path.endswith("/count_tokens"):
        return Answer(200, _dumps({"input_tokens": count_tokens(body)}).encode())
    model = str(body.get("model") or "echo")
    if api == "anthropic":
        try:
            usage = cache.account(body)
        except CacheControlError as exc:
            return Answer(400, error_body(api, 400, str(exc)))
        text, cut = _reply_text(body, prefix, cap_chars, body.get("max_tokens"))
        return _anthropic_answer(message_id, model, text, usage, "max_tokens" if cut else "end_turn", stream)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    text, cut = _reply_text(body, prefix, cap_chars, limit)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return _openai_answer(message_id, model, text, count_tokens(body), "length" if cut else "stop",
                          stream, include_usage)


def _anthropic_usage(usage: CacheUsage, output_tokens: int) -> dict[str, int]:
    return {"input_tokens": usage.input_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
            "output_tokens": output_tokens}


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {_dumps(data)}\n\n".encode()


def _anthropic_answer(message_id: str, model: str, text: str, usage: CacheUsage, stop_reason: str,
                      stream: bool) -> Answer:
    out = estimate_text_tokens(text)
    message = {"id": message_id, "type": "message", "role": "assistant", "model": model,
               "content": [{"type": "text", "text": text}], "stop_reason": stop_reason,
               "stop_sequence": None, "usage": _anthropic_usage(usage, out)}
    if not stream:
        return Answer(200, _dumps(message).encode(), output_tokens=out)
    start = {**message, "content": [], "stop_reason": None, "usage": _anthropic_usage(usage, 1)}
    events = [(_sse("message_start", {"type": "message_start", "message": start}), False),
              (_sse("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}}), False),
              (_sse("ping", {"type": "ping"}), False)]
    for piece in _WORDS.findall(text):
        events.append((_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": piece}}), True))
    # message_delta usage is cumulative (as the API sends it): the whole usage, final output count.
    events += [(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}), False),
               (_sse("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                       "usage": _anthropic_usage(usage, out)}), False),
               (_sse("message_stop", {"type": "message_stop"}), False)]
    return Answer(200, events=events, output_tokens=out)


def _openai_answer(message_id: str, model: str, text: str, prompt_tokens: int, finish: str, stream: bool,
                   include_usage: bool) -> Answer:
    out = estimate_text_tokens(text)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": out, "total_tokens": prompt_tokens + out,
             "prompt_tokens_details": {"cached_tokens": 0}}
    base = {"id": message_id, "created": int(time.time()), "model": model}
    if not stream:
        choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                  "logprobs": None, "finish_reason": finish}
        return Answer(200, _dumps({**base, "object": "chat.completion", "choices": [choice],
                                   "usage": usage}).encode(), output_tokens=out)

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
        data = {**base, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if include_usage:
            data["usage"] = None
        return f"data: {_dumps(data)}\n\n".encode()

    events = [(chunk({"role": "assistant", "content": ""}, None), False)]
    events += [(chunk({"content": piece}, None), True) for piece in _WORDS.findall(text)]
    events.append((chunk({}, finish), False))
    if include_usage:
        final = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        events.append((f"data: {_dumps(final)}\n\n".encode(), False))
    events.append((b"data: [DONE]\n\n", False))
    return Answer(200, events=events, output_tokens=out)
