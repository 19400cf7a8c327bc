"""The offline backend: deterministic answers in both wire formats, no network.

The answer is "echo: " + the last user message (whitespace collapsed, 200 chars at
most, and cut at ``max_tokens``), with usage estimated as utf-8 bytes / 4 and
Anthropic prompt-cache accounting (``prompt_cache``, the same rules the tests'
fake upstream applies). Latency is modelled, not measured: ``latency_ms`` passes
before the first byte; a stream then sends one delta per word, ``ms_per_token``
apart; a whole body waits ``latency_ms + ms_per_token × output tokens``. With
both at 0 the whole stream is one chunk, which keeps the gateway benchmark about
the gateway.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from ..config import BackendConfig
from ..errors import FatalBackendError
from ..gateway.dialects import DIALECTS
from .base import Backend, UpstreamRequest, UpstreamResponse
from .prompt_cache import PromptCache
from .synthetic import synthesize
from .wire import upstream_message

_JSON = {"content-type": "application/json"}
_SSE = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


class EchoBackend(Backend):
    """Answers every request locally and deterministically, Anthropic or OpenAI format."""

    kind = "echo"
    apis = frozenset(DIALECTS)

    def __init__(self, name: str, config: BackendConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, config)
        self.prompt_cache = PromptCache(clock=clock)
        self._ids = itertools.count(1)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Answer ``request`` after the configured latency; 4xx problems raise FatalBackendError."""
        dialect = request.dialect
        if request.path not in dialect.paths:
            body = dialect.error_body(404, f"{request.path} is not an endpoint of the {request.api} API")
            raise FatalBackendError(f"backend {self.name!r}: no endpoint {request.path}", backend=self.name,
                                    status=404, body=body)
        serial = f"{next(self._ids):012d}"
        stream = request.stream and request.path != "/v1/messages/count_tokens"
        answer = synthesize(request.api, request.path, request.body, stream,
                            message_id=dialect.message_id("echo", serial), cache=self.prompt_cache)
        if answer.status >= 400:
            raise FatalBackendError(f"backend {self.name!r}: {upstream_message(answer.body)}", backend=self.name,
                                    status=answer.status, body=answer.body)
        headers = {dialect.request_id_header: f"req_echo_{serial}"}
        first_byte_s = self.config.latency_ms / 1000
        if not answer.is_stream:
            await _pause(first_byte_s + answer.output_tokens * self.config.ms_per_token / 1000)
            return UpstreamResponse(200, {**_JSON, **headers}, body=answer.body)
        await _pause(first_byte_s)
        chunks = _paced(answer.events, self.config.ms_per_token / 1000)
        return UpstreamResponse(200, {**_SSE, **headers}, chunks=chunks, _closer=_closer(chunks))


async def _pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def _paced(events: list[tuple[bytes, bool]], per_delta_s: float) -> AsyncIterator[bytes]:
    """Yield the SSE events, ``per_delta_s`` between content deltas (all at once when 0)."""
    if per_delta_s <= 0:
        yield b"".join(event for event, _ in events)
        return
    seen_delta = False
    for event, is_delta in events:
        if is_delta and seen_delta:
            await asyncio.sleep(per_delta_s)
        seen_delta = seen_delta or is_delta
        yield event


def _closer(chunks: AsyncIterator[bytes]) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        try:
            await chunks.aclose()  # type: ignore[attr-defined]  # an async generator
        except RuntimeError:  # being consumed by another task right now: it finishes on its own
            pass
    return close
