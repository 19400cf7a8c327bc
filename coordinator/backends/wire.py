"""What the HTTP backends share about the wire: URLs, headers, failures, streams.

One policy each, so ``anthropic.py`` and ``openai.py`` cannot drift apart:

* ``classify_status`` — an upstream error status (+ ``x-should-retry``,
  ``retry-after-ms`` / ``retry-after``) becomes ``RetryableError`` or
  ``FatalBackendError``; the fatal one carries the upstream error body unchanged.
* ``join_url`` — how a configured ``base_url`` and a request path combine.
* ``forward_headers`` / ``returned_headers`` — which headers cross the backend.
* ``stream_response`` — wraps an upstream byte stream: transport failures, and a
  stream that ends without its API's final event, raise ``RetryableError``.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ..errors import BackendError, ConfigError, FatalBackendError, RetryableError
from .base import RETRYABLE_STATUS, UpstreamResponse

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailer", "trailers", "transfer-encoding", "upgrade"})
# Credentials of the gateway's own clients must never reach the provider; the
# backend adds its own key. Framing and encoding are the HTTP client's business.
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length", "content-type", "authorization", "x-api-key",
                                "accept-encoding", "cookie"}
# Bodies reach the gateway decoded and unframed, so these would lie about them.
_NOT_RETURNED = _HOP_BY_HOP | {"content-length", "content-encoding", "set-cookie"}
_TAIL_BYTES = 256
_FINAL_EVENTS = {"anthropic": (b"event: message_stop", b"event: error"), "openai": (b"[DONE]",)}


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


def join_url(base_url: str, path: str, query: str = "", *, api: str) -> str:
    """The upstream URL for a request path, following each SDK's base_url convention.

    OpenAI-style base URLs include the API version ("https://api.openai.com/v1",
    "http://localhost:11434/v1"), so the request's leading "/v1" is replaced by
    the base URL; a base URL with no path at all gets "/v1". Anthropic-style base
    URLs do not ("https://api.anthropic.com"), so the path is appended whole; a
    trailing "/v1" on one is dropped rather than doubled.
    """
    base = base_url.rstrip("/")
    if api == "openai":
        if not urlsplit(base).path:
            base += "/v1"
        rest = path[3:] if path.startswith("/v1/") else path
    else:
        base = base[:-3] if base.endswith("/v1") else base
        rest = path
    return f"{base}{rest}" + (f"?{query}" if query else "")


def forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Request headers to pass upstream (anthropic-version, anthropic-beta, ...), lower-cased."""
    return {k.lower(): v for k, v in headers.items() if k.lower() not in _NOT_FORWARDED}


def returned_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Upstream response headers worth relaying (request-id, rate-limit info, content-type)."""
    return {k.lower(): v for k, v in headers.items() if k.lower() not in _NOT_RETURNED}


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
                          finish: Callable[[bool], Awaitable[None]], *, api: str, backend: str,
                          errors: tuple[type[BaseException], ...]) -> UpstreamResponse:
    """An UpstreamResponse whose ``chunks`` relay ``source`` and translate its failures.

    ``finish(complete)`` releases the upstream connection: back to the pool when the
    stream was read to its end, closed otherwise; it must be idempotent. ``errors``
    are the transport's exception types, raised from ``source`` when the
    connection breaks or times out.
    """
    if not str(headers.get("content-type", "")).startswith("text/event-stream"):
        await finish(False)
        raise malformed(backend, f"expected text/event-stream, got {headers.get('content-type')!r}")

    async def chunks() -> AsyncIterator[bytes]:
        tail, complete = b"", False
        try:
            async for chunk in source:
                if chunk:
                    tail = (tail + chunk)[-_TAIL_BYTES:]
                    yield chunk
            complete = any(marker in tail for marker in _FINAL_EVENTS[api])
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
