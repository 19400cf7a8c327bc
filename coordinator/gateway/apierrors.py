"""Errors in each API's own JSON, so the official SDKs raise their usual exceptions.

Anthropic: ``{"type": "error", "error": {"type": ..., "message": ...}}``.
OpenAI: ``{"error": {"message": ..., "type": ..., "param": null, "code": ...}}``.
Inside a stream that already started, the same error travels as an SSE event
(Anthropic ``event: error``; OpenAI a ``data:`` chunk holding ``error``), which
both SDKs raise as an API error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ..errors import BackendError, BudgetError, CircuitOpenError, FatalBackendError, RetryableError
from .sse import encode_event

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
                 403: "permission_error", 404: "not_found_error", 429: "rate_limit_exceeded"}


@dataclass
class ApiError:
    """An error to send: status, message, extra headers, and optionally the upstream's own body."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def payload(self, api: str) -> dict:
        """The error object in ``api``'s shape."""
        if api == "anthropic":
            kind = _ANTHROPIC_TYPES.get(self.status, "api_error")
            return {"type": "error", "error": {"type": kind, "message": self.message}}
        kind = _OPENAI_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": None, "code": kind}}

    def render(self, api: str) -> bytes:
        """The response body: the upstream's own error JSON when it sent one, else ours."""
        if self.body is not None and _is_json(self.body):
            return self.body
        return json.dumps(self.payload(api)).encode()

    def event(self, api: str) -> bytes:
        """The same error as an SSE event, for a stream already under way."""
        payload = self.payload(api)
        return encode_event("error" if api == "anthropic" else None, payload)


def _is_json(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def _retry_after(seconds: float | None) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds)))} if seconds is not None else {}


def from_exception(exc: BaseException) -> ApiError:
    """Translate a pipeline exception into what the client is told."""
    if isinstance(exc, CircuitOpenError):
        return ApiError(503, str(exc), _retry_after(exc.retry_after_s))
    if isinstance(exc, RetryableError):
        status = exc.status if exc.status and exc.status >= 400 else 502
        return ApiError(status, f"upstream failed after retries: {exc}", _retry_after(exc.retry_after_s))
    if isinstance(exc, FatalBackendError):
        return ApiError(exc.status, str(exc), {"x-should-retry": "false"}, exc.body)
    if isinstance(exc, BudgetError):
        return ApiError(402, str(exc), {"x-should-retry": "false"})
    if isinstance(exc, BackendError):
        return ApiError(502, str(exc))
    return ApiError(500, f"gateway error: {type(exc).__name__}: {exc}")
