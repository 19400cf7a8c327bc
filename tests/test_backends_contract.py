"""One contract suite for every backend kind: echo, and openai / anthropic pointed at the fake upstream.

Answers are checked by the real SDKs: each test builds an SDK client whose HTTP
transport is the backend under test, so what the SDK parses is exactly what the
backend returned. Coroutines run under ``asyncio.run`` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anthropic
import httpx2
import openai
import pytest

from coordinator.backends import Backend, UpstreamRequest, UpstreamResponse, auto_kind, make_backend
from coordinator.backends.prompt_cache import count_tokens
from coordinator.config import BackendConfig
from coordinator.errors import ConfigError, FatalBackendError, RetryableError
from tests.fake_upstream import CutStream, FakeUpstream, Hang, Malformed, Reply, Reset, Stall, await_until

T = TypeVar("T")
KEYS = {"ANTHROPIC_API_KEY": "sk-ant-contract", "OPENAI_API_KEY": "sk-openai-contract"}
HTTP_CASES = [("openai", "openai"), ("anthropic", "anthropic")]
CASES = [("echo", "anthropic"), ("echo", "openai"), *HTTP_CASES]
ANTHROPIC_CASES = [case for case in CASES if case[1] == "anthropic"]
BIG = "Shared context that every task sees first. " * 120  # past the 1024-token cache minimum


def case_id(case: tuple[str, str]) -> str:
    """Test id: backend kind, then the API it speaks."""
    return f"{case[0]}-{case[1]}"


def build(kind: str, fake: FakeUpstream, **overrides: Any) -> Backend:
    """A backend of ``kind``; HTTP kinds point at the fake upstream."""
    settings: dict[str, Any] = {"latency_ms": 0} if kind == "echo" else {"base_url": fake.url, "timeout_s": 5}
    settings.update(overrides)
    return make_backend("contract", BackendConfig(kind=kind, **settings), KEYS)


def run(backend: Backend, scenario: Callable[[Backend], Awaitable[T]]) -> T:
    """Run ``scenario(backend)`` in a fresh event loop, closing the backend after."""

    async def main() -> T:
        try:
            return await scenario(backend)
        finally:
            await backend.aclose()

    return asyncio.run(main())


def make_request(api: str, *, stream: bool = False, text: str = "hello there", **extra: Any) -> UpstreamRequest:
    """A minimal request in ``api``'s format; ``extra`` goes into the body."""
    if api == "anthropic":
        body = {"model": "claude-test", "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
        path, headers = "/v1/messages", {"anthropic-version": "2023-06-01"}
    else:
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": text}]}
        path, headers = "/v1/chat/completions", {}
    body.update(extra)
    if stream:
        body["stream"] = True
    return UpstreamRequest(api, path, body, stream=stream, headers=headers)  # type: ignore[arg-type]


async def read_all(response: UpstreamResponse) -> bytes:
    """The whole answer: the body, or every stream chunk."""
    if response.chunks is None:
        return response.body or b""
    try:
        return b"".join([chunk async for chunk in response.chunks])
    finally:
        await response.aclose()


async def send_all(backend: Backend, request: UpstreamRequest) -> bytes:
    """Send and read the whole answer."""
    return await read_all(await backend.send(request))


def sdk_transport(backend: Backend, api: str) -> httpx2.AsyncClient:
    """An HTTP client whose every request is answered by ``backend.send``."""

    async def handle(http_request: httpx2.Request) -> httpx2.Response:
        body = json.loads(http_request.content)
        request = UpstreamRequest(api, http_request.url.path, body, stream=bool(body.get("stream")),  # type: ignore[arg-type]
                                  headers=dict(http_request.headers), query=http_request.url.query.decode())
        response = await backend.send(request)
        content = response.body if response.chunks is None else response.chunks
        return httpx2.Response(response.status, headers=response.headers, content=content)

    return httpx2.AsyncClient(transport=httpx2.MockTransport(handle))


async def ask_sdk(backend: Backend, api: str, stream: bool, text: str = "hello there") -> tuple[str, int, int]:
    """Ask through the real SDK: (answer text, input tokens, output tokens)."""
    messages = [{"role": "user", "content": text}]
    http_client = sdk_transport(backend, api)
    if api == "anthropic":
        claude = anthropic.AsyncAnthropic(api_key="x", base_url="http://backend.test", http_client=http_client,
                                          max_retries=0)
        if stream:
            async with claude.messages.stream(model="m", max_tokens=64, messages=messages) as events:
                message = await events.get_final_message()
        else:
            message = await claude.messages.create(model="m", max_tokens=64, messages=messages)
        return message.content[0].text, message.usage.input_tokens, message.usage.output_tokens
    gpt = openai.AsyncOpenAI(api_key="x", base_url="http://backend.test/v1", http_client=http_client, max_retries=0)
    if not stream:
        completion = await gpt.chat.completions.create(model="m", messages=messages)
        assert completion.usage is not None
        return completion.choices[0].message.content or "", completion.usage.prompt_tokens, \
            completion.usage.completion_tokens
    chunks = [chunk async for chunk in await gpt.chat.completions.create(
        model="m", messages=messages, stream=True, stream_options={"include_usage": True})]
    usage = chunks[-1].usage
    assert usage is not None
    text_out = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    return text_out, usage.prompt_tokens, usage.completion_tokens


# --- answers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_answers_parse_with_the_real_sdk_streamed_or_not(case: tuple[str, str], fake_upstream: FakeUpstream) -> None:
    kind, api = case
    backend = build(kind, fake_upstream)
    plain = run(backend, lambda b: ask_sdk(b, api, stream=False, text="what is   two plus two"))
    streamed = run(backend, lambda b: ask_sdk(b, api, stream=True, text="what is   two plus two"))
    assert "what is two plus two" in plain[0]
    assert streamed == plain
    assert plain[1] > 0 and plain[2] > 0


@pytest.mark.parametrize("case", ANTHROPIC_CASES, ids=case_id)
def test_count_tokens(case: tuple[str, str], fake_upstream: FakeUpstream) -> None:
    request = make_request("anthropic", text=BIG)
    request = UpstreamRequest("anthropic", "/v1/messages/count_tokens", request.body, headers=request.headers)
    answer = json.loads(run(build(case[0], fake_upstream), lambda b: send_all(b, request)))
    assert answer == {"input_tokens": count_tokens(request.body)}


@pytest.mark.parametrize("case", ANTHROPIC_CASES, ids=case_id)
def test_prompt_cache_is_written_once_then_read(case: tuple[str, str], fake_upstream: FakeUpstream) -> None:
    system = [{"type": "text", "text": BIG, "cache_control": {"type": "ephemeral"}}]

    async def twice(backend: Backend) -> list[dict[str, int]]:
        answers = [await send_all(backend, make_request("anthropic", text=q, system=system)) for q in ("a", "b")]
        return [json.loads(answer)["usage"] for answer in answers]

    first, second = run(build(case[0], fake_upstream), twice)
    assert first["cache_creation_input_tokens"] > 1024 and first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == 0


@pytest.mark.parametrize("case", ANTHROPIC_CASES, ids=case_id)
def test_too_many_breakpoints_is_fatal_and_carries_the_error_body(case: tuple[str, str],
                                                                  fake_upstream: FakeUpstream) -> None:
    marked = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    request = make_request("anthropic", system=[marked] * 5)
    with pytest.raises(FatalBackendError) as caught:
        run(build(case[0], fake_upstream), lambda b: send_all(b, request))
    assert caught.value.status == 400 and caught.value.body is not None
    assert json.loads(caught.value.body)["error"]["type"] == "invalid_request_error"


# --- HTTP backends: what crosses the wire ---------------------------------------------------------

@pytest.mark.parametrize("case", HTTP_CASES, ids=case_id)
def test_body_headers_and_query_pass_through_but_client_credentials_do_not(case: tuple[str, str],
                                                                           fake_upstream: FakeUpstream) -> None:
    kind, api = case
    request = make_request(api, context_management={"edits": []}, output_config={"effort": "low"},
                           metadata={"user_id": "session-1"})
    request.body["messages"].insert(0, {"role": "system", "content": "a system-role message"})
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "b1,b2", "x-api-key": "client-token",
               "authorization": "Bearer client-token"}
    request = UpstreamRequest(api, request.path, request.body, headers=headers, query="beta=true")  # type: ignore[arg-type]
    run(build(kind, fake_upstream), lambda b: send_all(b, request))
    call = fake_upstream.calls[-1]
    assert call.json == request.body and call.query == "beta=true"
    assert call.headers["anthropic-beta"] == "b1,b2" and call.headers["anthropic-version"] == "2023-06-01"
    assert "client-token" not in json.dumps(call.headers)
    key = KEYS["ANTHROPIC_API_KEY" if kind == "anthropic" else "OPENAI_API_KEY"]
    sent = {call.headers.get("x-api-key"), call.headers.get("authorization", "").removeprefix("Bearer ")}
    assert key in sent  # the backend's own key (this anthropic SDK sends it as a bearer token)


@pytest.mark.parametrize("case", HTTP_CASES, ids=case_id)
def test_a_request_base_url_overrides_the_configured_one(case: tuple[str, str], fake_upstream: FakeUpstream) -> None:
    kind, api = case
    request = make_request(api)
    request = UpstreamRequest(api, request.path, request.body, headers=request.headers,  # type: ignore[arg-type]
                              base_url=fake_upstream.url)
    answer = run(build(kind, fake_upstream, base_url=f"http://127.0.0.1:{closed_port()}"),
                 lambda b: send_all(b, request))
    assert b"reply to: hello there" in answer and len(fake_upstream.calls) == 1


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- HTTP backends: failures ----------------------------------------------------------------------

STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])


@STREAMS
@pytest.mark.parametrize("case", HTTP_CASES, ids=case_id)
@pytest.mark.parametrize("reply, retry_after_s", [
    (Reply(429, headers={"retry-after": "7"}), 7.0),
    (Reply(429, headers={"retry-after-ms": "250", "retry-after": "7"}), 0.25),
    (Reply(500), None), (Reply(503), None), (Reply(529), None), (Reply(408), None),
], ids=["429", "429-ms", "500", "503", "529", "408"])
def test_retryable_statuses(reply: Reply, retry_after_s: float | None, case: tuple[str, str], stream: bool,
                            fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(reply)
    with pytest.raises(RetryableError) as caught:
        run(build(case[0], fake_upstream), lambda b: send_all(b, make_request(case[1], stream=stream)))
    assert caught.value.status == reply.status and caught.value.retry_after_s == retry_after_s


@STREAMS
@pytest.mark.parametrize("case", HTTP_CASES, ids=case_id)
def test_client_errors_are_fatal_and_carry_the_upstream_body(case: tuple[str, str], stream: bool,
                                                             fake_upstream: FakeUpstream) -> None:
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too big"}}
    fake_upstream.script(Reply(400, json=error), Reply(401))
    backend = build(case[0], fake_upstream)
    with pytest.raises(FatalBackendError, match="max_tokens: too big") as caught:
        run(backend, lambda b: send_all(b, make_request(case[1], stream=stream)))
    assert caught.value.status == 400 and json.loads(caught.value.body or b"") == error
    with pytest.raises(FatalBackendError, match=f"check the API key in \\$({'|'.join(KEYS)})") as caught:
        run(backend, lambda b: send_all(b, make_request(case[1], stream=stream)))
    assert caught.value.status == 401 and KEYS["ANTHROPIC_API_KEY"] not in str(caught.value)


@pytest.mark.parametrize("case", HTTP_CASES, ids=case_id)
def test_x_should_retry_overrides_the_status(case: tuple[str, str], fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(400, headers={"x-should-retry": "true"}), Reply(503, headers={"x-should-retry": "false"}))
    backend = build(case[0], fake_upstream)
    with pytest.raises(RetryableError) as retryable:
        run(backend, lambda b: send_all(b, make_request(case[1])))
    with pytest.raises(FatalBackendError) as fatal:
        run(backend, lambda b: send_all(b, make_request(case[1])))
    assert retryable.value.status == 400 and fatal.value.status == 503


@STREAMS
@pytest.mark.parametrize("case", HTTP_CASES, ids=case_id)
@pytest.mark.parametrize("behaviour", [Reset(), Malformed(), CutStream(after_events=2)],
                         ids=["reset", "malformed", "cut"])
def test_broken_answers_are_retryable(behaviour: object, case: tuple[str, str], stream: bool,
                                      fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(behaviour)
    with pytest.raises(RetryableError):
        run(build(case[0], fake_upstream), lambda b: send_all(b, make_request(case[1], stream=stream)))


@pytest.mark.parametrize("case", HTTP_CASES, ids=case_id)
def test_a_cut_stream_raises_from_chunks_after_relaying_what_arrived(case: tuple[str, str],
                                                                     fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(CutStream(after_events=2))
    received: list[bytes] = []

    async def scenario(backend: Backend) -> None:
        response = await backend.send(make_request(case[1], stream=True))
        assert response.chunks is not None
        try:
            async for chunk in response.chunks:
                received.append(chunk)
        finally:
            await response.aclose()

    with pytest.raises(RetryableError, match="stream broke"):
        run(build(case[0], fake_upstream), scenario)
    assert b"".join(received).count(b"data: ") == 2


def test_connection_refused_is_retryable(fake_upstream: FakeUpstream) -> None:
    for kind, api in HTTP_CASES:
        backend = build(kind, fake_upstream, base_url=f"http://127.0.0.1:{closed_port()}")
        with pytest.raises(RetryableError):
            run(backend, lambda b: send_all(b, make_request(api)))


@pytest.mark.parametrize("case", HTTP_CASES, ids=case_id)
def test_a_hang_times_out_as_retryable_and_abandons_the_call(case: tuple[str, str],
                                                             fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Hang(), Stall(after_events=1))
    backend = build(case[0], fake_upstream, timeout_s=0.2)
    with pytest.raises(RetryableError):
        run(backend, lambda b: send_all(b, make_request(case[1])))
    with pytest.raises(RetryableError):
        run(backend, lambda b: send_all(b, make_request(case[1], stream=True)))
    run(backend, lambda b: await_until(lambda: fake_upstream.cancelled == 2, what="both calls abandoned"))


@pytest.mark.parametrize("case", HTTP_CASES, ids=case_id)
def test_cancelling_send_cancels_the_upstream_call(case: tuple[str, str], fake_upstream: FakeUpstream) -> None:
    fake_upstream.gate.close()

    async def scenario(backend: Backend) -> None:
        task = asyncio.create_task(backend.send(make_request(case[1])))
        await await_until(lambda: fake_upstream.held == 1, what="the call to reach the upstream")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await await_until(lambda: fake_upstream.cancelled == 1, what="the upstream to see the hang-up")

    run(build(case[0], fake_upstream), scenario)


@pytest.mark.parametrize("case", HTTP_CASES, ids=case_id)
def test_closing_a_stream_midway_abandons_the_upstream_call(case: tuple[str, str],
                                                            fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Stall(after_events=2))

    async def scenario(backend: Backend) -> None:
        response = await backend.send(make_request(case[1], stream=True))
        assert response.chunks is not None
        assert await response.chunks.__anext__()
        await response.aclose()
        await await_until(lambda: fake_upstream.cancelled == 1, what="the upstream to see the hang-up")

    run(build(case[0], fake_upstream), scenario)


def test_a_local_server_may_need_no_key(fake_upstream: FakeUpstream) -> None:
    config = BackendConfig(kind="openai", base_url=fake_upstream.url + "/v1", api_key_env="")
    run(make_backend("local", config, {}), lambda b: send_all(b, make_request("openai")))
    assert "authorization" not in fake_upstream.calls[-1].headers


def test_a_base_url_that_is_not_http_is_a_config_error() -> None:
    for kind, _ in HTTP_CASES:
        with pytest.raises(ConfigError, match="not an http"):
            make_backend("main", BackendConfig(kind=kind, base_url="localhost:8000"), KEYS)


# --- echo specifics -------------------------------------------------------------------------------

@pytest.mark.parametrize("ms_per_token, expected_chunks", [(0, 1), (0.01, None)])
def test_echo_paces_one_chunk_per_event_when_ms_per_token_is_set(ms_per_token: float, expected_chunks: int | None,
                                                                fake_upstream: FakeUpstream) -> None:
    request = make_request("anthropic", stream=True, text="one two three four")

    async def chunks(backend: Backend) -> list[bytes]:
        response = await backend.send(request)
        assert response.chunks is not None
        return [chunk async for chunk in response.chunks]

    got = run(build("echo", fake_upstream, ms_per_token=ms_per_token), chunks)
    events = b"".join(got).count(b"event: ")
    assert len(got) == (expected_chunks or events)
    assert events == 6 + 5  # six framing events (ping included), one delta per word of "echo: one two three four"


def test_echo_rejects_unknown_paths_and_bodies_without_messages(fake_upstream: FakeUpstream) -> None:
    backend = build("echo", fake_upstream)
    with pytest.raises(FatalBackendError) as caught:
        run(backend, lambda b: b.send(UpstreamRequest("openai", "/v1/messages", {"messages": []})))
    assert caught.value.status == 404
    with pytest.raises(FatalBackendError) as caught:
        run(backend, lambda b: b.send(UpstreamRequest("anthropic", "/v1/messages", {"model": "m"})))
    assert caught.value.status == 400 and b"messages" in (caught.value.body or b"")


# --- construction ---------------------------------------------------------------------------------

@pytest.mark.parametrize("env, expected", [
    ({"ANTHROPIC_API_KEY": "a", "OPENAI_API_KEY": "o"}, "anthropic"),
    ({"OPENAI_API_KEY": "o"}, "openai"),
    ({"ANTHROPIC_API_KEY": ""}, "echo"),
    ({}, "echo"),
])
def test_auto_kind_follows_the_keys_in_env(env: dict[str, str], expected: str) -> None:
    assert auto_kind(BackendConfig(kind="auto"), env) == expected
    assert auto_kind(BackendConfig(kind="echo"), env) == "echo"


@pytest.mark.parametrize("kind, variable", [("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY")])
def test_missing_key_names_the_variable(kind: str, variable: str) -> None:
    with pytest.raises(ConfigError, match=variable) as caught:
        make_backend("main", BackendConfig(kind=kind), {})
    assert caught.value.key == "backends.main.api_key_env"
    with pytest.raises(ConfigError, match="MY_KEY"):
        make_backend("main", BackendConfig(kind=kind, api_key_env="MY_KEY"), {variable: "set-but-not-used"})


def test_auto_without_keys_is_echo_serving_both_apis() -> None:
    backend = make_backend("main", BackendConfig(), {})
    assert backend.kind == "echo" and backend.serves("anthropic") and backend.serves("openai")


def test_importing_backends_does_not_load_sdks_or_http_clients() -> None:
    code = "import sys, coordinator.backends; print(sorted({'anthropic', 'openai', 'aiohttp', 'httpx2'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
