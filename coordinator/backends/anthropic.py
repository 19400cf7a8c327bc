"""Anthropic through the official SDK, as a faithful proxy.

The gateway forwards bodies the SDK's typed ``messages.create`` does not know
(context_management, output_config, system-role messages, as Claude Code sends),
so this backend posts the raw JSON through the SDK's generic ``post`` with
``cast_to=httpx2.Response, stream=True`` and gets the raw, unread response back.
The SDK contributes auth, the connection pool, timeouts (``timeout_s`` per
connect / read, httpx-style) and its exception types; its retries are off, the
gateway owns retry. Request headers (anthropic-version, anthropic-beta, ...) and
the query string (``?beta=true``) pass through. Base URLs follow the SDK's
convention, without "/v1" (``AnthropicDialect.join_url``); a request's own ``base_url`` wins.
The SDK client is made lazily inside the running loop, one per loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import anthropic
import httpx2

from ..config import BackendConfig
from ..errors import BackendError, RetryableError
from ..gateway.dialects import ANTHROPIC
from .base import Backend, UpstreamRequest, UpstreamResponse
from .wire import check_base_url, check_json, classify_status, json_bytes, stream_response

DEFAULT_BASE_URL = "https://api.anthropic.com"
# What httpx2 raises from a response body when the connection breaks, times out or was closed by us.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx2.TransportError, httpx2.StreamError)


class AnthropicBackend(Backend):
    """Messages and count_tokens against the Anthropic API (or a compatible server)."""

    kind = "anthropic"
    apis = frozenset({ANTHROPIC.name})

    def __init__(self, name: str, config: BackendConfig, *, api_key: str, key_env: str | None = None) -> None:
        super().__init__(name, config)
        self.base_urls = [check_base_url(url, backend=name) for url in config.base_urls] or [DEFAULT_BASE_URL]
        self._key_env = key_env
        # Every argument explicit: left out, the SDK would read ANTHROPIC_* from os.environ.
        self._new_client: Callable[[], anthropic.AsyncAnthropic] = functools.partial(
            anthropic.AsyncAnthropic, api_key=api_key, base_url=self.base_urls[0], max_retries=0,
            timeout=config.timeout_s, open_telemetry=False)
        self._client: anthropic.AsyncAnthropic | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"AnthropicBackend(name={self.name!r}, base_urls={self.base_urls!r})"

    def _sdk(self) -> anthropic.AsyncAnthropic:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client, self._client_loop = self._new_client(), loop
        return self._client

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """POST the raw body upstream once; the answer, or RetryableError / FatalBackendError."""
        dialect = request.dialect
        url = dialect.join_url(request.base_url or self.base_urls[0], request.path, request.query)
        options = {"headers": {**dialect.forward_headers(request.headers), "content-type": "application/json"}}
        try:
            response = await self._sdk().post(url, cast_to=httpx2.Response, content=json_bytes(request.body),
                                              options=options, stream=True)  # type: ignore[arg-type]
        except (anthropic.APIError, *TRANSPORT_ERRORS) as exc:
            raise self._translate(exc, url) from exc
        if request.stream:

            async def finish(complete: bool) -> None:
                await response.aclose()  # pools a finished connection, closes an unfinished one

            return await stream_response(response.status_code, response.headers, response.aiter_bytes(), finish,
                                         dialect=dialect, backend=self.name, errors=TRANSPORT_ERRORS)
        try:
            body = await response.aread()
        except TRANSPORT_ERRORS as exc:
            raise RetryableError(f"backend {self.name!r}: upstream body broke off: {exc!r}",
                                 backend=self.name) from exc
        finally:
            await response.aclose()
        return UpstreamResponse(response.status_code, dict(response.headers), body=check_json(body, backend=self.name))

    def _translate(self, exc: BaseException, url: str) -> BackendError:
        """The coordinator error for an SDK or transport exception."""
        if isinstance(exc, anthropic.APIStatusError):
            return classify_status(exc.status_code, exc.response.headers, exc.response.content,
                                   backend=self.name, key_env=self._key_env)
        if isinstance(exc, (anthropic.APITimeoutError, httpx2.TimeoutException)):
            return RetryableError(f"backend {self.name!r}: no answer from {url} within {self.config.timeout_s}s",
                                  backend=self.name)
        cause = exc.__cause__ or exc
        return RetryableError(f"backend {self.name!r}: no answer from {url}: {cause!r}", backend=self.name)

    async def aclose(self) -> None:
        """Close the SDK client's connection pool (only from the loop that created it)."""
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.close()
