"""The OpenAI Chat Completions API on the wire (OpenAI, vLLM, SGLang, llama.cpp, Ollama).

Streams are bare ``data:`` chunks (``chat.completion.chunk``) ending in
``data: [DONE]``; usage comes in a last chunk with empty ``choices``, and only
when the request set ``stream_options.include_usage``. An error inside a stream
is a chunk holding ``error``. Errors are ``{"error": {"message", "type",
"param", "code"}}``. Base URLs include the version ("https://api.openai.com/v1").
``prompt_tokens`` includes the cached part, which ``usage`` moves out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ...errors import MalformedEventError
from ..sse import encode_event, parse_event
from .base import Dialect, StreamScanner, TextAnswer, Usage, count, dumps, merge_delta, read_event

_DONE = "[DONE]"


class OpenAIDialect(Dialect):
    """Chat Completions, streamed as ``data:`` chunks."""

    name = "openai"
    title = "the OpenAI Chat Completions API"
    paths = ("/v1/chat/completions",)
    generation_path = "/v1/chat/completions"
    path_words = ("chat", "completions")
    request_id_header = "x-request-id"
    final_markers = (b"[DONE]",)
    end_sentinel = _DONE
    error_types = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
                   403: "permission_error", 404: "not_found_error", 429: "rate_limit_exceeded"}

    def join_url(self, base_url: str, path: str, query: str = "") -> str:
        """Base URLs include the version: the request's leading "/v1" is replaced; a bare host gets "/v1"."""
        base = base_url.rstrip("/")
        if not urlsplit(base).path:
            base += "/v1"
        rest = path[3:] if path.startswith("/v1/") else path
        return f"{base}{rest}" + (f"?{query}" if query else "")

    def message_id(self, tag: str, serial: str) -> str:
        """``chatcmpl-<tag>-<serial>``."""
        return f"chatcmpl-{tag}-{serial}"

    def error_payload(self, status: int, message: str) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        kind = self.error_types.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": kind}}

    def error_event(self, status: int, message: str) -> bytes:
        """A ``data:`` chunk holding the error."""
        return encode_event(None, self.error_payload(status, message))

    def usage(self, fields: Mapping[str, Any] | None) -> Usage:
        """Usage with the cached tokens moved out of ``prompt_tokens``."""
        if not isinstance(fields, Mapping):
            return Usage()
        details = fields.get("prompt_tokens_details")
        cached = count(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
        return Usage(input_tokens=max(0, count(fields.get("prompt_tokens")) - cached),
                     output_tokens=count(fields.get("completion_tokens")), cache_read_tokens=cached)

    def usage_fields(self, usage: Usage) -> dict[str, Any]:
        """The ``usage`` object: ``prompt_tokens`` counts the cached tokens too."""
        prompt = usage.input_tokens + usage.cache_read_tokens
        return {"prompt_tokens": prompt, "completion_tokens": usage.output_tokens,
                "total_tokens": prompt + usage.output_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens}}

    def streams_usage(self, body: Mapping[str, Any]) -> bool:
        """Only when the request set ``stream_options.include_usage``."""
        return bool((body.get("stream_options") or {}).get("include_usage"))

    def with_stream_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with ``stream_options.include_usage`` set."""
        return {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}

    def body_problem(self, body: Mapping[str, Any]) -> str | None:
        """``stream_options`` must be an object: the gateway reads and extends it."""
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            return f"stream_options must be an object, not {type(options).__name__}"
        return None

    def model_list(self, models: list[tuple[str, str, int]]) -> dict[str, Any]:
        """OpenAI's ``{"object": "list", "data": [model, ...]}``."""
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "coordinator"} for model_id, _, created in models]}

    def max_output_tokens(self, body: Mapping[str, Any]) -> Any:
        """``max_completion_tokens``, or the older ``max_tokens``."""
        return body.get("max_completion_tokens", body.get("max_tokens"))

    def scan(self, raw: bytes, scanner: StreamScanner) -> bool:
        """The end from ``[DONE]``, usage from the usage chunk (kept from clients that did not ask), errors."""
        if b'"usage"' not in raw and b'"error"' not in raw:
            if b"[DONE]" in raw and read_event(raw)[0].data.strip() == _DONE:
                scanner.complete = True
            return True  # content chunks: nothing to read, no JSON parse
        payload = read_event(raw)[1]
        if isinstance(payload.get("error"), dict):
            scanner.error = payload["error"]
        if isinstance(payload.get("usage"), dict):
            scanner.usage_fields = payload["usage"]
            if scanner.strip_usage_chunk and not payload.get("choices"):
                return False
        return True

    def is_valid_first_event(self, raw: bytes) -> bool:
        """A chunk whose data is a JSON object (or an immediate ``[DONE]``)."""
        try:
            event = parse_event(raw)
            if event.data.strip() != _DONE:
                event.json()
        except MalformedEventError:
            return False
        return True

    def events_to_body(self, events: Iterable[bytes]) -> dict[str, Any]:
        """The ``chat.completion`` a finished stream stands for: choices rebuilt from their deltas."""
        body: dict[str, Any] = {}
        choices: dict[int, dict[str, Any]] = {}
        for event, chunk in (read_event(raw) for raw in events):
            if event.data.strip() == _DONE:
                continue
            for key, value in chunk.items():
                if key not in ("choices", "object") and (value is not None or key not in body):
                    body[key] = value
            for choice in chunk.get("choices") or []:
                _fold_choice(choices.setdefault(choice.get("index", 0), {}), choice)
        body["object"] = "chat.completion"
        body["choices"] = [_finish_choice(i, c) for i, c in sorted(choices.items())]
        return body

    def body_to_events(self, body: dict[str, Any], *, include_usage: bool = False) -> list[bytes]:
        """Per choice a chunk with the whole message and one with the finish reason; usage; ``[DONE]``."""
        base = {k: v for k, v in body.items() if k not in ("choices", "usage", "object")}
        base["object"] = "chat.completion.chunk"
        tail = {"usage": None} if include_usage else {}
        events = []
        for choice in body.get("choices") or []:
            index = choice.get("index", 0)
            message = dict(choice.get("message") or {})
            tools = message.pop("tool_calls", None)
            delta = {k: v for k, v in message.items() if v is not None}
            if tools:
                delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(tools)]
            first = {"index": index, "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None}
            last = {"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}
            events.append(encode_event(None, {**base, "choices": [first], **tail}))
            events.append(encode_event(None, {**base, "choices": [last], **tail}))
        if include_usage:
            events.append(encode_event(None, {**base, "choices": [], "usage": body.get("usage")}))
        events.append(encode_event(None, _DONE))
        return events

    def prefix_parts(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Tools and the leading system / developer messages (else the first message)."""
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        lead = [m for m in messages[:4] if isinstance(m, dict) and m.get("role") in ("system", "developer")]
        return {"tools": body.get("tools"), "lead": lead or messages[:1]}

    def text_body(self, answer: TextAnswer) -> bytes:
        """A ``chat.completion`` with one choice."""
        choice = {"index": 0, "message": {"role": "assistant", "content": answer.text, "refusal": None},
                  "logprobs": None, "finish_reason": _finish(answer)}
        return dumps({**_head(answer), "object": "chat.completion", "choices": [choice],
                      "usage": self.usage_fields(answer.usage)}).encode()

    def text_events(self, answer: TextAnswer, *, include_usage: bool) -> list[tuple[bytes, bool]]:
        """A role chunk, one chunk per word, the finish chunk, the usage chunk if asked, ``[DONE]``."""
        head = _head(answer)

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
            data = {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            if include_usage:
                data["usage"] = None
            return encode_event(None, data)

        events = [(chunk({"role": "assistant", "content": ""}, None), False)]
        events += [(chunk({"content": piece}, None), True) for piece in answer.pieces]
        events.append((chunk({}, _finish(answer)), False))
        if include_usage:
            final = {**head, "object": "chat.completion.chunk", "choices": [],
                     "usage": self.usage_fields(answer.usage)}
            events.append((encode_event(None, final), False))
        events.append((encode_event(None, _DONE), False))
        return events


def _head(answer: TextAnswer) -> dict[str, Any]:
    return {"id": answer.message_id, "created": int(time.time()), "model": answer.model}


def _finish(answer: TextAnswer) -> str:
    return "length" if answer.truncated else "stop"


def _fold_choice(state: dict[str, Any], choice: dict[str, Any]) -> None:
    message = state.setdefault("message", {})
    tools = state.setdefault("tools", {})
    for key, value in (choice.get("delta") or {}).items():
        if key == "tool_calls":
            for call in value or []:
                slot = tools.setdefault(call.get("index", 0), {"function": {}})
                slot.update({k: v for k, v in call.items() if k not in ("index", "function") and v is not None})
                merge_delta(slot["function"], call.get("function") or {})
        elif isinstance(value, str) and isinstance(message.get(key), str):
            message[key] += value
        elif value is not None or key not in message:
            message[key] = value
    for key in ("finish_reason", "logprobs"):
        if choice.get(key) is not None or key not in state:
            state[key] = choice.get(key)


def _finish_choice(index: int, state: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "assistant", "content": None, "refusal": None, **state.get("message", {})}
    if state.get("tools"):
        message["tool_calls"] = [state["tools"][i] for i in sorted(state["tools"])]
    return {"index": index, "message": message, "finish_reason": state.get("finish_reason"),
            "logprobs": state.get("logprobs")}
