"""Server-sent events: the one parser and encoder of the code base (standard library only).

Both APIs stream SSE (Anthropic names its events, OpenAI sends bare ``data:``
chunks). The gateway cuts upstream bytes into whole events (``EventSplitter``) and
reads a few of them (``parse_event``); the ``llm`` runner reads the gateway's answer
line by line (``iter_events``). Both go through the same line rules, so a quirk of
the format (CRLF framing, ``data:`` with or without its space, multi-line data) is
handled in one place. What each API puts in its events is its dialect's business
(``gateway.dialects``).

Bytes that are not UTF-8, and data that is not a JSON object where one is expected
(``Event.json``), raise ``MalformedEventError`` naming the problem: a clear error
for the caller to report or retry, never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from ..errors import MalformedEventError

_BOUNDARY = b"\n\n"
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # built once, not per call


class Event(NamedTuple):
    """One parsed event: its ``event:`` name (None when it has none) and its data lines, joined."""

    name: str | None
    data: str

    def json(self) -> dict[str, Any]:
        """The data as a JSON object; MalformedEventError when it is not one."""
        try:
            value = json.loads(self.data)
        except ValueError as exc:
            raise MalformedEventError(f"SSE data is not JSON ({exc}): {self.data[:80]!r}",
                                      event=self.data.encode()) from exc
        if not isinstance(value, dict):
            raise MalformedEventError(f"SSE data is not a JSON object: {self.data[:80]!r}", event=self.data.encode())
        return value


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedEventError(f"SSE event is not UTF-8 ({exc.reason} at byte {exc.start}): {raw[:80]!r}",
                                  event=raw) from exc


def _read_line(line: str, name: str | None, data: list[str]) -> str | None:
    """Apply one field line to the event being built; returns the event name so far."""
    if line.startswith("data:"):
        data.append(line[6:] if line[5:6] == " " else line[5:])  # the spec drops one leading space
    elif line.startswith("event:"):
        name = line[6:].strip()
    return name  # comments (":...") and unknown fields are ignored, as the spec says


def parse_event(raw: bytes) -> Event:
    """The name and data of one whole event (as ``EventSplitter`` cuts them)."""
    name: str | None = None
    data: list[str] = []
    for line in _decode(raw).split("\n"):
        name = _read_line(line.rstrip("\r"), name, data)
    return Event(name, "\n".join(data))


def iter_events(lines: Iterable[bytes]) -> Iterator[Event]:
    """Events from a line-by-line reader (an ``http.client`` response); events without data are skipped."""
    name: str | None = None
    data: list[str] = []
    for raw in lines:
        line = _decode(raw).rstrip("\r\n")
        if line:
            name = _read_line(line, name, data)
            continue
        if data:
            yield Event(name, "\n".join(data))
        name, data = None, []


def encode_event(name: str | None, data: Any) -> bytes:
    """One SSE event, with ``data`` JSON-encoded unless it is already a string."""
    text = data if isinstance(data, str) else _ENCODER.encode(data)
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {text}\n\n".encode()


class EventSplitter:
    """Cuts a byte stream at event boundaries, so events are forwarded and replayed whole."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The non-blank events ``chunk`` completes, each ending with its blank line."""
        buffer = self._buffer + chunk
        if b"\r" in buffer:  # normalise CRLF framing so boundaries are found
            buffer = buffer.replace(b"\r\n", b"\n")
        out: list[bytes] = []
        start = 0
        while (end := buffer.find(_BOUNDARY, start)) >= 0:
            raw = buffer[start:end + 2]
            start = end + 2
            if raw.strip():
                out.append(raw)
        self._buffer = buffer[start:]
        return out
