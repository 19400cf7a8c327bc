"""Any OpenAI-compatible server (OpenAI, vLLM, SGLang, llama.cpp, Ollama) over HTTP.

One pooled aiohttp session per backend, created lazily inside the running event
loop (a backend serves one loop; a later loop gets a fresh session). The body goes
upstream as JSON, unknown fields included, and a stream's SSE bytes come back
unchanged as ``chunks``. ``base_url`` follows the OpenAI SDK convention: it
includes the version, "https://api.openai.com/v1" (``OpenAIDialect.join_url``
has the rule); a request's own ``base_url``, chosen by prefix-affinity routing, wins over
the configured ones. ``timeout_s`` bounds connecting and every wait for bytes, as
httpx's timeouts do, so a long stream that keeps producing is never cut.
"""

from __future__ import annotations

import asyncio

import aiohttp

from ..config import BackendConfig
from ..errors import RetryableError
from ..gateway.dialects import OPENAI
from .base import Backend, UpstreamRequest, UpstreamResponse
from .wire import check_base_url, check_json, classify_status, json_bytes, stream_response

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# What aiohttp raises when a connection fails, breaks or times out (ServerTimeoutError is both).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


class OpenAIBackend(Backend):
    """Chat Completions against any OpenAI-compatible server."""

    kind = "openai"
    apis = frozenset({OPENAI.name})

    def __init__(self, name: str, config: BackendConfig, *, api_key: str | None, key_env: str | None = None) -> None:
        super().__init__(name, config)
        self.base_urls = [check_base_url(url, backend=name) for url in config.base_urls] or [DEFAULT_BASE_URL]
        self._auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._key_env = key_env
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAIBackend(name={self.name!r}, base_urls={self.base_urls!r})"

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.timeout_s,
                                            sock_read=self.config.timeout_s)
            # trust_env=False: proxies and netrc come from config, never from the environment.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.config.max_concurrency), timeout=timeout,
                trust_env=False)
            self._session_loop = loop
        return self._session

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """POST the body upstream once; the answer, or RetryableError / FatalBackendError."""
        dialect = request.dialect
        url = dialect.join_url(request.base_url or self.base_urls[0], request.path, request.query)
        headers = {**dialect.forward_headers(request.headers), "content-type": "application/json",
                   "accept": "text/event-stream" if request.stream else "application/json", **self._auth}
        try:
            response = await self._client().post(url, data=json_bytes(request.body), headers=headers,
                                                  allow_redirects=False)
        except TRANSPORT_ERRORS as exc:
            raise RetryableError(f"backend {self.name!r}: no answer from {url}: {exc!r}", backend=self.name) from exc
        if not 200 <= response.status < 300:
            body = await self._read(response)
            raise classify_status(response.status, response.headers, body, backend=self.name, key_env=self._key_env)
        if request.stream:

            async def finish(complete: bool) -> None:
                if complete:
                    response.release()  # back to the pool for the next call
                else:
                    response.close()  # drops the connection: the upstream sees the call abandoned

            return await stream_response(response.status, response.headers, response.content.iter_any(), finish,
                                         dialect=dialect, backend=self.name, errors=TRANSPORT_ERRORS)
        body = check_json(await self._read(response), backend=self.name)
        return UpstreamResponse(response.status, dict(response.headers), body=body)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body; a connection that breaks or stalls mid-body is retryable."""
        try:
            body = await response.read()
        except TRANSPORT_ERRORS as exc:
            response.close()
            raise RetryableError(f"backend {self.name!r}: upstream body broke off: {exc!r}",
                                 backend=self.name) from exc
        except BaseException:  # cancelled: the connection is mid-body, so it cannot be reused
            response.close()
            raise
        response.release()
        return body

    async def aclose(self) -> None:
        """Close the pooled session (only from the loop that created it)."""
        session, self._session = self._session, None
        if session is not None and not session.closed and self._session_loop is asyncio.get_running_loop():
            await session.close()
