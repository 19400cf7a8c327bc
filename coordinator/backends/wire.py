"""What the HTTP backends share about the wire: URLs, headers, failures, streams.

One policy each, so ``anthropic.py`` and ``openai.py`` cannot drift apart:

* ``classify_status`` — an upstream error status (+ ``x-should-retry``,
  ``retry-after-ms`` / ``retry-after``) becomes ``RetryableError`` or
  ``FatalBackendError``; the fatal one carries the upstream error body unchanged.
* ``stream_response`` — wraps an upstream byte stream: transport failures, and a
  stream that ends without its API's final event (``Dialect.is_stream_end``),
  raise ``RetryableError``.

How a base URL and a path combine, and which headers go upstream, are each API's
dialect's rules (``request.dialect.join_url`` / ``forward_headers``).
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ..errors import BackendError, ConfigError, FatalBackendError, RetryableError
from ..gateway.dialects import Dialect
from .base import RETRYABLE_STATUS, UpstreamResponse

_TAIL_BYTES = 256


def json_bytes(body: Any) -> bytes:
    """The request body as sent upstream: compact JSON, UTF-8, unknown fields kept."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def check_base_url(base_url: str, *, backend: str) -> str:
    """``base_url`` without a trailing slash; ConfigError unless it is an http(s) URL."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"base_url {base_url!r} is not an http(s) URL; write e.g. \"http://127.0.0.1:8000/v1\"",
                          key=f"backends.{backend}.base_url")
    return base_url.rstrip("/")


def _number(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds the upstream asks to wait: ``retry-after-ms``, else ``retry-after`` (seconds or HTTP date)."""
    lower = {k.lower(): v for k, v in headers.items()}
    millis = _number(lower.get("retry-after-ms"))
    if millis is not None:
        return max(0.0, millis / 1000)
    value = lower.get("retry-after")
    seconds = _number(value)
    if value is None or seconds is not None:
        return None if seconds is None else max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)  # RFC 9110 also allows an HTTP date
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def upstream_message(body: bytes | None) -> str:
    """The upstream error's own message, from either API's error JSON, if any."""
    try:
        data = json.loads(body or b"")
    except ValueError:
        return (body or b"")[:200].decode(errors="replace").strip()
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return ""


def classify_status(status: int, headers: Mapping[str, str], body: bytes | None, *, backend: str,
                    key_env: str | None = None) -> BackendError:
    """The error for a non-2xx upstream answer; ``x-should-retry`` overrides the status rule."""
    lower = {k.lower(): v for k, v in headers.items()}
    should_retry = lower.get("x-should-retry", "").strip().lower()
    retryable = status in RETRYABLE_STATUS or status >= 500
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    detail = upstream_message(body)
    message = f"backend {backend!r}: upstream answered {status}" + (f": {detail}" if detail else "")
    if retryable:
        return RetryableError(message, backend=backend, status=status, retry_after_s=retry_after_s(lower))
    if status in (401, 403) and key_env:
        message += f" (check the API key in ${key_env})"
    return FatalBackendError(message, backend=backend, status=status, body=body)


def malformed(backend: str, why: str) -> RetryableError:
    """A 2xx answer the API could not have sent (a proxy's error page, a truncated body)."""
    return RetryableError(f"backend {backend!r}: malformed upstream response: {why}", backend=backend, status=502)


def check_json(body: bytes, *, backend: str) -> bytes:
    """``body`` if it parses as JSON, else the malformed-response RetryableError."""
    try:
        json.loads(body)
    except ValueError as exc:
        raise malformed(backend, f"body is not JSON ({exc})") from exc
    return body


async def stream_response(status: int, headers: Mapping[str, str], source: AsyncIterator[bytes],
                          finish: Callable[[bool], Awaitable[None]], *, dialect: Dialect, backend: str,
                          errors: tuple[type[BaseException], ...]) -> UpstreamResponse:
    """An UpstreamResponse whose ``chunks`` relay ``source`` and translate its failures.

    ``finish(complete)`` releases the upstream connection: back to the pool when the
    stream was read to its end, closed otherwise; it must be idempotent. ``errors``
    are the transport's exception types, raised from ``source`` when the
    connection breaks or times out. ``headers`` are the upstream's, as they came.
    """
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    if not str(content_type or "").startswith("text/event-stream"):
        await finish(False)
        raise malformed(backend, f"expected text/event-stream, got {content_type!r}")

    async def chunks() -> AsyncIterator[bytes]:
        tail, complete = b"", False
        try:
            async for chunk in source:
                if chunk:
                    tail = (tail + chunk)[-_TAIL_BYTES:]
                    yield chunk
            complete = dialect.is_stream_end(tail)
        except errors as exc:
            raise RetryableError(f"backend {backend!r}: upstream stream broke: {exc!r}", backend=backend) from exc
        finally:
            await finish(complete)
        if not complete:
            raise malformed(backend, "the stream ended before its final event")

    iterator = chunks()
    return UpstreamResponse(status, dict(headers), chunks=iterator, _closer=_closer(iterator, finish))


def _closer(iterator: Any, finish: Callable[[bool], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        await finish(False)  # closing the connection first makes a read pending in another task fail
        try:
            await iterator.aclose()
        except RuntimeError:  # the iterator is being consumed by another task right now; it will see the close
            pass
    return close
