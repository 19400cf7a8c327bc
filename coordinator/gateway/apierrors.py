"""Errors in each API's own JSON, so the official SDKs raise their usual exceptions.

``ApiError`` is what the client is told; its dialect renders it (``Dialect.error_payload``
has each API's shape, ``Dialect.error_event`` the same error inside a stream that
already started). ``from_exception`` is the one translation from the pipeline's
exceptions to a status, a message and headers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ..errors import BackendError, BudgetError, CircuitOpenError, FatalBackendError, RetryableError
from .dialects import Dialect


@dataclass
class ApiError:
    """An error to send: status, message, extra headers, and optionally the upstream's own body."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def render(self, dialect: Dialect) -> bytes:
        """The response body: the upstream's own error JSON when it sent one, else ours in ``dialect``'s shape."""
        if self.body is not None and _is_json(self.body):
            return self.body
        return dialect.error_body(self.status, self.message)

    def event(self, dialect: Dialect) -> bytes:
        """The same error as an SSE event, for a stream already under way."""
        return dialect.error_event(self.status, self.message)


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
