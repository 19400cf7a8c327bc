"""Server-sent event streams of both APIs: scanning them live, and converting stream ⇄ body.

The gateway forwards upstream events byte for byte; ``StreamScanner`` only cuts the
byte stream at event boundaries (so a late joiner replays whole events), reads the
usage, notices the terminal event (Anthropic ``message_stop``, OpenAI ``[DONE]``) and
in-stream errors. One upstream call serves streaming and non-streaming clients
alike, so a finished stream can be folded into the body the non-streaming API would
have returned (``events_to_body``), and a body unfolded into the events a streaming
client expects (``body_to_events``), with the shapes the official SDKs accumulate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .accounting import Usage, anthropic_usage, openai_usage

_BOUNDARY = b"\n\n"


def parse_event(raw: bytes) -> tuple[str | None, str]:
    """(event name, data) of one SSE event; data lines are joined with newlines."""
    name = None
    data: list[str] = []
    for line in raw.decode("utf-8", "replace").split("\n"):
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])
        elif line.startswith("event:"):
            name = line[6:].strip()
    return name, "\n".join(data)


def encode_event(name: str | None, data: Any) -> bytes:
    """One SSE event, with ``data`` JSON-encoded unless it is already a string."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {text}\n\n".encode()


class StreamScanner:
    """Cuts raw upstream bytes into whole events and reads usage, completion and errors."""

    def __init__(self, api: str, *, strip_usage_chunk: bool = False) -> None:
        self.api = api
        self.strip_usage_chunk = strip_usage_chunk  # an include_usage chunk the client did not ask for
        self.complete = False
        self.error: dict[str, Any] | None = None
        self._buffer = b""
        self._usage: dict[str, Any] = {}

    @property
    def usage(self) -> Usage:
        """Usage seen so far."""
        return anthropic_usage(self._usage) if self.api == "anthropic" else openai_usage(self._usage)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Events completed by ``chunk``, ready to forward (each ends with a blank line)."""
        buffer = self._buffer + chunk
        if b"\r" in buffer:  # normalise CRLF framing so boundaries are found
            buffer = buffer.replace(b"\r\n", b"\n")
        out: list[bytes] = []
        start = 0
        while (end := buffer.find(_BOUNDARY, start)) >= 0:
            raw = buffer[start:end + 2]
            start = end + 2
            if raw.strip() and self._scan(raw):
                out.append(raw)
        self._buffer = buffer[start:]
        return out

    def _scan(self, raw: bytes) -> bool:
        """Read what matters from one event; False to keep it from clients."""
        if self.api == "anthropic":
            return self._scan_anthropic(raw)
        return self._scan_openai(raw)

    def _scan_anthropic(self, raw: bytes) -> bool:
        if b"message_" not in raw and b"error" not in raw:
            return True  # content deltas and pings: nothing to read, no JSON parse
        name, data = parse_event(raw)
        kind = name or _json_type(data)
        if kind == "message_stop":
            self.complete = True
        elif kind in ("message_start", "message_delta", "error"):
            payload = _loads(data)
            if kind == "error":
                self.error = payload.get("error") or {"type": "api_error", "message": data}
            usage = (payload.get("message") or {}).get("usage") if kind == "message_start" else payload.get("usage")
            if isinstance(usage, dict):
                self._usage.update({k: v for k, v in usage.items() if v is not None})
        return True

    def _scan_openai(self, raw: bytes) -> bool:
        _, data = parse_event(raw)
        if data.strip() == "[DONE]":
            self.complete = True
            return True
        if b'"usage"' not in raw and b'"error"' not in raw:
            return True
        payload = _loads(data)
        if isinstance(payload.get("error"), dict):
            self.error = payload["error"]
        if isinstance(payload.get("usage"), dict):
            self._usage = payload["usage"]
            if self.strip_usage_chunk and not payload.get("choices"):
                return False
        return True


def is_valid_first_event(api: str, raw: bytes) -> bool:
    """Whether a stream's first event looks like the API's (a proxy's garbage is retried instead)."""
    name, data = parse_event(raw)
    if api == "openai" and data.strip() == "[DONE]":
        return True
    try:
        payload = json.loads(data)
    except ValueError:
        return False
    return isinstance(payload, dict) and (api == "openai" or name is not None)


def _loads(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _json_type(data: str) -> str | None:
    value = _loads(data).get("type")
    return value if isinstance(value, str) else None


def events_to_body(api: str, events: Iterable[bytes]) -> dict[str, Any]:
    """The non-streaming response body a finished stream stands for."""
    payloads = [_loads(data) for _, data in (parse_event(e) for e in events) if data.strip() != "[DONE]"]
    return _fold_anthropic(payloads) if api == "anthropic" else _fold_openai(payloads)


def _append(target: dict[str, Any], delta: dict[str, Any]) -> None:
    """Merge a delta the way both APIs mean it: strings concatenate, other values replace."""
    for key, value in delta.items():
        if key in ("type", "index"):
            continue
        if isinstance(value, str) and isinstance(target.get(key), str):
            target[key] += value
        elif value is not None or key not in target:
            target[key] = value


def _fold_anthropic(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {}
    partial_json: dict[int, str] = {}
    for event in payloads:
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


def _apply_block_delta(block: dict[str, Any], delta: dict[str, Any], partial_json: dict[int, str],
                       index: int) -> None:
    kind = delta.get("type")
    if kind == "input_json_delta":
        partial_json[index] = partial_json.get(index, "") + delta.get("partial_json", "")
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta.get("citation"))
    else:  # text_delta, thinking_delta, signature_delta and any future string delta
        _append(block, delta)


def _fold_openai(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in payloads:
        for key, value in chunk.items():
            if key not in ("choices", "object") and (value is not None or key not in body):
                body[key] = value
        for choice in chunk.get("choices") or []:
            _fold_openai_choice(choices.setdefault(choice.get("index", 0), {}), choice)
    body["object"] = "chat.completion"
    body["choices"] = [_finish_openai_choice(i, c) for i, c in sorted(choices.items())]
    return body


def _fold_openai_choice(state: dict[str, Any], choice: dict[str, Any]) -> None:
    message = state.setdefault("message", {})
    tools = state.setdefault("tools", {})
    for key, value in (choice.get("delta") or {}).items():
        if key == "tool_calls":
            for call in value or []:
                slot = tools.setdefault(call.get("index", 0), {"function": {}})
                slot.update({k: v for k, v in call.items() if k not in ("index", "function") and v is not None})
                _append(slot["function"], call.get("function") or {})
        elif isinstance(value, str) and isinstance(message.get(key), str):
            message[key] += value
        elif value is not None or key not in message:
            message[key] = value
    for key in ("finish_reason", "logprobs"):
        if choice.get(key) is not None or key not in state:
            state[key] = choice.get(key)


def _finish_openai_choice(index: int, state: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "assistant", "content": None, "refusal": None, **state.get("message", {})}
    if state.get("tools"):
        message["tool_calls"] = [state["tools"][i] for i in sorted(state["tools"])]
    return {"index": index, "message": message, "finish_reason": state.get("finish_reason"),
            "logprobs": state.get("logprobs")}


def body_to_events(api: str, body: dict[str, Any], *, include_usage: bool = False) -> list[bytes]:
    """The events a streaming client expects for a finished body."""
    if api == "anthropic":
        return _unfold_anthropic(body)
    return _unfold_openai(body, include_usage)


def _unfold_anthropic(body: dict[str, Any]) -> list[bytes]:
    usage = dict(body.get("usage") or {})
    start = {k: v for k, v in body.items() if k not in ("content", "stop_reason", "stop_sequence")}
    start.update(content=[], stop_reason=None, stop_sequence=None, usage={**usage, "output_tokens": 0})
    events = [encode_event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(body.get("content") or []):
        head, deltas = _split_block(block)
        events.append(encode_event("content_block_start",
                                   {"type": "content_block_start", "index": index, "content_block": head}))
        events += [encode_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                   for d in deltas]
        events.append(encode_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": body.get("stop_reason"), "stop_sequence": body.get("stop_sequence")}
    events.append(encode_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    events.append(encode_event("message_stop", {"type": "message_stop"}))
    return events


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


def _unfold_openai(body: dict[str, Any], include_usage: bool) -> list[bytes]:
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
    events.append(encode_event(None, "[DONE]"))
    return events
