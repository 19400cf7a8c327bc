"""The ``Dialect`` contract: everything that differs between the wire APIs, behind one surface.

A dialect owns its API's endpoint paths, the headers that change an answer, its
error JSON, its usage numbers, what its SSE events mean (which one ends a stream,
which carry usage or an error), and the conversions between a finished stream
and the body the non-streaming API would have sent. The gateway, the backends
and the ``llm`` runner ask the dialect and never compare API names themselves, so
a third API is one new module here.

The header rules are the same for both APIs and live here, once: which client
headers go upstream and which upstream headers come back to clients.

Standard library only (the ``llm`` runner imports the SSE parser beside it).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ...errors import MalformedEventError, RetryableError
from ..sse import Event, EventSplitter, parse_event

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailer", "trailers", "transfer-encoding", "upgrade"})
# The gateway's own credentials must never reach a provider (the backend adds its key),
# and framing and encoding are the HTTP client's business.
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length", "content-type", "authorization", "x-api-key",
                                "accept-encoding", "cookie"}
_OWN_PREFIX = "x-coordinator-"  # the gateway's own request headers stop at the gateway
# Bodies reach clients decoded and re-framed, and the gateway sets its own type, date and server.
_NOT_RETURNED = _HOP_BY_HOP | {"content-length", "content-encoding", "content-type", "set-cookie", "date",
                               "server", "alt-svc", "via"}
_USAGE_KEY = '"usage"'
_DECODER = json.JSONDecoder()
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_WORDS = re.compile(r"\s*\S+\s*|\s+")
_EMPTY = Event(None, "")


@dataclass(frozen=True)
class Usage:
    """Token counts of one response, normalised across APIs."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0

    @property
    def total(self) -> int:
        """Every token, for token budgets."""
        return self.input_tokens + self.output_tokens + self.cache_write_tokens + self.cache_read_tokens


@dataclass(frozen=True)
class TextAnswer:
    """A plain text answer to encode in a dialect's wire format (the echo backend and test fakes)."""

    message_id: str
    model: str
    text: str
    usage: Usage
    truncated: bool = False  # cut short by the request's output limit

    @property
    def pieces(self) -> list[str]:
        """The text as one delta per word, as a paced stream sends it."""
        return _WORDS.findall(self.text)


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 kept: the bytes both APIs send."""
    return _ENCODER.encode(value)


def count(value: Any) -> int:
    """A token count from a usage field, 0 when absent or not a number."""
    return int(value) if isinstance(value, (int, float)) else 0


def merge_delta(target: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Merge a stream delta the way both APIs mean it: strings concatenate, other values replace."""
    for key, value in delta.items():
        if key in ("type", "index"):
            continue
        if isinstance(value, str) and isinstance(target.get(key), str):
            target[key] += value
        elif value is not None or key not in target:
            target[key] = value


def read_event(raw: bytes) -> tuple[Event, dict[str, Any]]:
    """An event and its data as a JSON object, for events only read in passing.

    Never raises: bytes that are not UTF-8 read as an empty event, data that is not
    a JSON object as {}; such an event is forwarded as it came and read as nothing.
    """
    try:
        event = parse_event(raw)
    except MalformedEventError:
        return _EMPTY, {}
    try:
        return event, event.json()
    except MalformedEventError:
        return event, {}


class StreamScanner:
    """Cuts raw upstream bytes into whole events and reads usage, completion and errors as they pass.

    The gateway forwards events byte for byte; the dialect's ``scan`` reads only
    what matters (usage, the final event, an error) and may keep an event from
    clients (an OpenAI usage chunk the client did not ask for).
    """

    def __init__(self, dialect: Dialect, *, strip_usage_chunk: bool = False) -> None:
        self.dialect = dialect
        self.strip_usage_chunk = strip_usage_chunk
        self.complete = False
        self.error: dict[str, Any] | None = None
        self.usage_fields: dict[str, Any] = {}
        self._splitter = EventSplitter()

    @property
    def usage(self) -> Usage:
        """Usage seen so far."""
        return self.dialect.usage(self.usage_fields)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Events completed by ``chunk``, ready to forward (each ends with a blank line)."""
        scan = self.dialect.scan
        return [raw for raw in self._splitter.feed(chunk) if scan(raw, self)]


class Dialect(ABC):
    """One wire API: its paths, header rules, errors, usage, and the meaning of its SSE events."""

    name: ClassVar[str]
    title: ClassVar[str]  # for messages: "the Anthropic Messages API"
    paths: ClassVar[tuple[str, ...]]  # the endpoints the gateway serves for it
    generation_path: ClassVar[str]  # the endpoint that generates (not count_tokens)
    path_words: ClassVar[tuple[str, ...]] = ()  # words that mark an unknown path as this API's, for its 404
    key_headers: ClassVar[tuple[str, ...]] = ()  # request headers that change the answer (dedup keys)
    request_id_header: ClassVar[str]
    final_markers: ClassVar[tuple[bytes, ...]]  # bytes whose presence in a stream's tail means it finished
    end_sentinel: ClassVar[str | None] = None  # data that is not JSON but ends a stream (OpenAI's [DONE])
    cache_marks: ClassVar[bool] = False  # the provider caches a prefix only where ``cache_control`` marks it
    error_types: ClassVar[Mapping[int, str]]

    def __repr__(self) -> str:
        return f"<Dialect {self.name}>"

    # Paths and headers

    @abstractmethod
    def join_url(self, base_url: str, path: str, query: str = "") -> str:
        """The upstream URL for a request path, following this API's SDK base_url convention."""

    def forward_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Client headers to pass upstream (anthropic-version, anthropic-beta, ...), lower-cased."""
        return {low: v for k, v in headers.items()
                if (low := k.lower()) not in _NOT_FORWARDED and not low.startswith(_OWN_PREFIX)}

    def returned_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Upstream response headers worth handing to clients (request ids, rate-limit info), lower-cased."""
        return {low: v for k, v in headers.items() if (low := k.lower()) not in _NOT_RETURNED}

    def key_header_values(self, headers: Mapping[str, str]) -> list[str]:
        """The values of the headers that change the answer, for a dedup key."""
        return [headers.get(name, "") for name in self.key_headers]

    @abstractmethod
    def message_id(self, tag: str, serial: str) -> str:
        """A message id in this API's style, for synthesized answers."""

    # Errors

    @abstractmethod
    def error_payload(self, status: int, message: str) -> dict[str, Any]:
        """The error object for ``status`` in this API's shape."""

    def error_body(self, status: int, message: str) -> bytes:
        """The error JSON body for ``status``."""
        return dumps(self.error_payload(status, message)).encode()

    @abstractmethod
    def error_event(self, status: int, message: str) -> bytes:
        """The same error as an SSE event, for a stream already under way (both SDKs raise it)."""

    # Usage

    @abstractmethod
    def usage(self, fields: Mapping[str, Any] | None) -> Usage:
        """Usage from this API's ``usage`` object."""

    def usage_from_body(self, body: Mapping[str, Any]) -> Usage:
        """Usage from a whole (non-streamed) response body."""
        return self.usage(body.get("usage"))

    def usage_from_body_bytes(self, raw: bytes) -> Usage:
        """Usage from a raw JSON body, decoding only its ``usage`` object (it sits near the end).

        A JSON string cannot contain an unescaped ``"usage"``, so the last occurrence is the
        key of the top-level object in both APIs' bodies. Anything unexpected falls back to a
        full parse; a body that is not JSON at all is a malformed answer.
        """
        text = raw.decode("utf-8", "replace")
        at = text.rfind(_USAGE_KEY)
        if at >= 0:
            start = text.find(":", at + len(_USAGE_KEY)) + 1
            while start < len(text) and text[start] in " \t\r\n":
                start += 1
            try:
                value, _ = _DECODER.raw_decode(text, start)
                if isinstance(value, dict):
                    return self.usage(value)
            except ValueError:
                pass
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise RetryableError(f"upstream sent a malformed body ({exc})", status=502) from exc
        return self.usage_from_body(body) if isinstance(body, dict) else Usage()

    @abstractmethod
    def usage_fields(self, usage: Usage) -> dict[str, Any]:
        """``usage`` as this API's ``usage`` object (the inverse of ``usage``)."""

    def streams_usage(self, body: Mapping[str, Any]) -> bool:
        """Whether a stream answering ``body`` reports usage without being asked."""
        return True

    def with_stream_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` asking the upstream to report usage in its stream (gateway accounting needs it)."""
        return body

    def max_output_tokens(self, body: Mapping[str, Any]) -> Any:
        """The request's limit on generated tokens, as the client gave it (None when absent)."""
        return body.get("max_tokens")

    def body_problem(self, body: Mapping[str, Any]) -> str | None:
        """Why the gateway cannot read ``body`` (a field of the wrong type it relies on), or None.

        Only fields the gateway itself reads are checked; everything else is the
        upstream's to judge, so unknown fields and roles still pass through.
        """
        return None

    @abstractmethod
    def model_list(self, models: list[tuple[str, str, int]]) -> dict[str, Any]:
        """``GET /v1/models`` in this API's list format, from (id, display name, created unix time)."""

    # Streams

    def scanner(self, *, strip_usage_chunk: bool = False) -> StreamScanner:
        """A scanner for one upstream stream of this API."""
        return StreamScanner(self, strip_usage_chunk=strip_usage_chunk)

    @abstractmethod
    def scan(self, raw: bytes, scanner: StreamScanner) -> bool:
        """Read what matters from one whole event into ``scanner``; False keeps it from clients."""

    def is_stream_end(self, tail: bytes) -> bool:
        """Whether the last bytes of a stream include its final event (else it was cut short)."""
        return any(marker in tail for marker in self.final_markers)

    def is_well_formed_event(self, raw: bytes) -> bool:
        """UTF-8, with data that is a JSON object (or the API's end sentinel, or no data at all).

        A later event that fails this is a broken stream, not content to pass on:
        clients cannot parse it, and a reply holding it must never be cached.
        """
        try:
            event = parse_event(raw)
            if event.data and event.data.strip() != self.end_sentinel:
                event.json()
        except MalformedEventError:
            return False
        return True

    @abstractmethod
    def is_valid_first_event(self, raw: bytes) -> bool:
        """Whether a stream's first event looks like this API's (a proxy's garbage is retried instead)."""

    @abstractmethod
    def events_to_body(self, events: Iterable[bytes]) -> dict[str, Any]:
        """The non-streaming response body a finished stream stands for."""

    @abstractmethod
    def body_to_events(self, body: dict[str, Any], *, include_usage: bool = False) -> list[bytes]:
        """The events a streaming client expects for a finished body (the shapes the SDKs accumulate)."""

    # Context caching

    @abstractmethod
    def prefix_parts(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The parts of a request that the tasks of a fleet share (beside the model)."""

    # Synthesized answers

    @abstractmethod
    def text_body(self, answer: TextAnswer) -> bytes:
        """``answer`` as this API's non-streaming response body."""

    @abstractmethod
    def text_events(self, answer: TextAnswer, *, include_usage: bool) -> list[tuple[bytes, bool]]:
        """``answer`` as this API's stream: (event, is a content delta), one delta per word."""
