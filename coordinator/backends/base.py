"""The one small surface every inference backend implements.

The gateway is a faithful proxy: it parses a request body once (for the dedup key,
the context cache and accounting), then hands the backend an ``UpstreamRequest``
and gets back an ``UpstreamResponse`` holding either the whole body or the raw
bytes of an SSE stream, with the upstream's headers as they came (the gateway
relays what the dialect's header rules allow). The request's wire rules (URL
joining, which client headers may go upstream, how a stream ends) are its
``dialect``'s. Backends translate their transport's and SDK's exceptions here, at
the boundary, into ``RetryableError`` / ``FatalBackendError``; nothing above
``backends/`` imports an SDK. Retries live in the gateway, so
backends never retry on their own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import BackendConfig
from ..gateway.dialects import Dialect, dialect_for

# Status codes worth retrying (docs/gateway.md, "The pipeline").
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


@dataclass(frozen=True)
class UpstreamRequest:
    """One call to send upstream, already routed and with its model mapped."""

    api: str  # the wire API's name; ``dialect`` knows its rules
    path: str
    body: dict[str, Any]
    stream: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)  # anthropic-version, anthropic-beta, ...
    query: str = ""  # e.g. "beta=true", passed through
    base_url: str | None = None  # chosen by prefix-affinity routing when several are configured

    @property
    def dialect(self) -> Dialect:
        """The rules of the request's wire API (paths, headers, stream end, errors)."""
        return dialect_for(self.api)


@dataclass
class UpstreamResponse:
    """A successful upstream answer: a whole body, or a stream of raw SSE bytes."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    chunks: AsyncIterator[bytes] | None = None
    _closer: Any = None

    async def aclose(self) -> None:
        """Release the upstream connection (cancels a stream still running)."""
        if self._closer is not None:
            closer, self._closer = self._closer, None
            await closer()


class Backend(ABC):
    """An upstream inference provider.

    ``send`` returns only successes (2xx). Failures raise ``RetryableError``
    (with ``retry_after_s`` from ``retry-after``, honouring ``x-should-retry``)
    or ``FatalBackendError`` (carrying the upstream status and error body, so the
    gateway can pass it to the client as it came). A stream that breaks part-way
    raises ``RetryableError`` from its ``chunks`` iterator.
    """

    kind: str = ""
    apis: frozenset[str] = frozenset()  # names of the dialects it speaks

    def __init__(self, name: str, config: BackendConfig) -> None:
        self.name = name
        self.config = config

    @abstractmethod
    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Make one upstream call, without retrying."""

    async def aclose(self) -> None:
        """Close pooled connections; the default has none."""

    def serves(self, api: str) -> bool:
        """Whether this backend speaks the wire API named ``api`` (a ``gateway.dialects`` name)."""
        return api in self.apis
