"""The gateway as a server: state files, stats, accounting, budgets, priority, and keeping secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import subprocess
import sys

import anthropic
import httpx
import openai
import pytest

from coordinator.config import load_config
from coordinator.gateway.accounting import STAT_KEYS
from coordinator.clock import ManualClock
from coordinator.gateway.server import start_in_thread
from coordinator.gateway.tokens import task_token
from tests.fake_upstream import Reply, await_until, fake_upstream, wait_until  # noqa: F401 - fixture
from tests.gateway_support import (ANTHROPIC_KEY, ENV, OPENAI_KEY, fleet_toml, start_gateway,  # noqa: F401
                                   user)

MODEL = "claude-sonnet-4-6"


def _client(gw: object, token: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=token or gw.token, max_retries=0, timeout=20)


def test_gateway_json_is_private_names_the_server_and_goes_away_at_stop(make_fleet, fake_upstream) -> None:
    root = make_fleet(fleet_toml(fake_upstream.url))
    gw = start_in_thread(load_config(root), ENV)
    path = root / ".coordinator" / "gateway.json"
    data = json.loads(path.read_text())
    assert data == {"url": gw.url, "pid": os.getpid(), "token": gw.token}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and gw.url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{gw.url}/healthz").status_code == 401, "every endpoint needs a token"
    assert httpx.get(f"{gw.url}/healthz", headers={"x-api-key": gw.token}).json()["ok"] is True
    gw.stop()
    assert not path.exists()


def test_stats_have_the_contract_keys_per_task_agent_model_and_backend(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    token = task_token(gw.token, "t-1", agent="llm")
    _client(gw, token).messages.create(model=MODEL, max_tokens=16, messages=user("a"))
    _client(gw, token).messages.create(model=MODEL, max_tokens=16, messages=user("a"))
    assert httpx.get(f"{gw.url}/v1/coordinator/stats", headers={"x-api-key": token}).status_code == 403
    stats = httpx.get(f"{gw.url}/v1/coordinator/stats", headers={"x-api-key": gw.token}).json()
    numeric = {k for k, v in stats.items() if isinstance(v, (int, float))}
    assert numeric == set(STAT_KEYS)
    assert {"tasks", "agents", "models", "backends"} <= set(stats)
    assert stats["requests"] == 2 and stats["upstream_calls"] == 1 and stats["dedup_hits"] == 1
    assert stats["input_tokens"] > 0 and stats["output_tokens"] > 0 and stats["usd"] > 0 and stats["usd_saved"] > 0
    assert set(stats["tasks"]["t-1"]) == set(STAT_KEYS) and stats["agents"]["llm"]["requests"] == 2
    assert stats["models"][MODEL]["upstream_calls"] == 1
    assert stats["backends"]["default"]["breaker"] == "closed"
    usage = httpx.get(f"{gw.url}/v1/coordinator/usage/t-1", headers={"authorization": f"Bearer {gw.token}"}).json()
    assert usage == {**stats["tasks"]["t-1"], "aliases": stats["task_aliases"]["t-1"]}
    assert set(usage["aliases"]) == {"default"} and usage["aliases"]["default"]["requests"] == 2
    assert httpx.get(f"{gw.url}/v1/coordinator/stats", headers={"x-api-key": "nope"}).status_code == 401
    assert httpx.get(f"{gw.url}/metrics").status_code == 401
    assert httpx.get(f"{gw.url}/metrics", headers={"x-api-key": token}).status_code == 403
    metrics = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {gw.token}"}).text
    assert "coordinator_gateway_dedup_hits_total 1.0" in metrics and "coordinator_gateway_requests_total 2.0" in metrics
    assert f'coordinator_gateway_tokens_total{{kind="output",model="{MODEL}"}}' in metrics


def test_stats_are_saved_and_survive_a_restart(make_fleet, fake_upstream) -> None:
    root = make_fleet(fleet_toml(fake_upstream.url))
    gw = start_in_thread(load_config(root), ENV)
    _client(gw, task_token(gw.token, "t-1")).messages.create(model=MODEL, max_tokens=16, messages=user("a"))
    before = gw.gateway.stats()
    wait_until(lambda: (root / ".coordinator" / "gateway-stats.json").exists(), 5, "the periodic save")
    gw.stop()
    saved = json.loads((root / ".coordinator" / "gateway-stats.json").read_text())
    assert saved["requests"] == 1 and saved["tasks"]["t-1"]["usd"] == pytest.approx(before["tasks"]["t-1"]["usd"])
    again = start_in_thread(load_config(root), ENV)
    try:
        assert again.gateway.stats()["usd"] == pytest.approx(before["usd"])
        assert again.gateway.stats()["tasks"]["t-1"]["requests"] == 1
    finally:
        again.stop()


def test_dedup_header_says_miss_hit_and_no_store_opts_out(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    body = {"model": MODEL, "max_tokens": 16, "messages": user("q")}
    headers = {"x-api-key": gw.token}
    hows = [httpx.post(f"{gw.url}/v1/messages", json=body, headers=headers).headers["x-coordinator-dedup"]
            for _ in range(2)]
    no_store = httpx.post(f"{gw.url}/v1/messages", json=body, headers={**headers, "x-coordinator-cache": "no-store"})
    assert hows == ["miss", "hit"] and no_store.headers["x-coordinator-dedup"] == "miss"
    assert len(fake_upstream.calls) == 2
    assert "x-coordinator-cache" not in fake_upstream.calls[-1].headers


def test_count_tokens_passes_through(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    count = _client(gw).messages.count_tokens(model=MODEL, messages=user("how many tokens is this"))
    assert count.input_tokens > 0 and fake_upstream.calls[-1].path == "/v1/messages/count_tokens"


def test_a_task_past_its_budget_gets_a_clear_error(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    # Each budget fits the first request's own estimate (input + max_tokens) and not a second one's.
    token = task_token(gw.token, "cheap", max_usd=0.00035)
    _client(gw, token).messages.create(model=MODEL, max_tokens=16, messages=user("first"))
    with pytest.raises(anthropic.APIStatusError) as info:
        _client(gw, token).messages.create(model=MODEL, max_tokens=16, messages=user("second"))
    assert info.value.status_code == 402 and "task 'cheap'" in info.value.message
    assert "max_usd" in info.value.message
    tokens = task_token(gw.token, "short", max_tokens=35)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=tokens, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=user("one"), max_tokens=4)
    with pytest.raises(openai.APIStatusError) as o_info:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("two"), max_tokens=4)
    assert o_info.value.status_code == 402 and "max_tokens_budget" in o_info.value.message
    assert _client(gw).messages.create(model=MODEL, max_tokens=16, messages=user("third"))  # others unaffected
    assert len(fake_upstream.calls) == 3


def test_the_fleet_past_its_budget_gets_a_clear_error(start_gateway, fake_upstream) -> None:
    gw = start_gateway(fleet={"max_usd": 0.00035})  # the first request's estimate fits, a second one's not
    _client(gw).messages.create(model=MODEL, max_tokens=16, messages=user("first"))
    with pytest.raises(anthropic.APIStatusError) as info:
        _client(gw, task_token(gw.token, "fresh")).messages.create(model=MODEL, max_tokens=16, messages=user("x"))
    assert info.value.status_code == 402 and "fleet" in info.value.message and "max_usd" in info.value.message
    assert len(fake_upstream.calls) == 1


def test_higher_priority_goes_first_when_the_backend_is_saturated(start_gateway, fake_upstream) -> None:
    gw = start_gateway(anthropic={"max_concurrency": 1})
    fake_upstream.gate.close()

    async def main() -> None:
        async with httpx.AsyncClient(timeout=20) as client:
            def post(text: str, priority: int) -> asyncio.Task:
                return asyncio.create_task(client.post(
                    f"{gw.url}/v1/messages", json={"model": MODEL, "max_tokens": 8, "messages": user(text)},
                    headers={"x-api-key": gw.token, "x-coordinator-priority": str(priority)}))
            tasks = [post("busy", 2)]
            await await_until(lambda: fake_upstream.held == 1, 10, "the first call")
            for text, priority in (("low", 3), ("normal", 2), ("critical", 0)):
                tasks.append(post(text, priority))
                await await_until(lambda: gw.gateway.upstreams["default"].limiter.waiting == len(tasks) - 1, 10,
                                  "the request to queue")
            fake_upstream.gate.open()
            assert [r.status_code for r in await asyncio.gather(*tasks)] == [200] * 4

    asyncio.run(main())
    order = [call.json["messages"][0]["content"] for call in fake_upstream.calls]
    assert order == ["busy", "critical", "normal", "low"]


def test_no_api_key_reaches_a_state_file_or_a_log_line(start_gateway, fake_upstream, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    gw = start_gateway()
    fake_upstream.script(Reply(500), Reply(401), Reply(429, headers={"retry-after": "0"}))
    client = _client(gw, task_token(gw.token, "t"))
    for text in ("a", "b", "c", "d"):
        try:
            client.messages.create(model=MODEL, max_tokens=8, messages=user(text))
        except anthropic.APIStatusError:
            pass
    openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.token, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=user("o"))
    with pytest.raises(anthropic.AuthenticationError):
        _client(gw, ANTHROPIC_KEY).messages.create(model=MODEL, max_tokens=8, messages=user("key as token"))
    # The keys were really in use: the upstream saw them.
    sent = [c.headers.get("x-api-key") or c.headers.get("authorization", "").removeprefix("Bearer ")
            for c in fake_upstream.calls]
    assert ANTHROPIC_KEY in sent and OPENAI_KEY in sent and gw.token not in sent
    gw.gateway.save_stats(force=True)
    state_dir = gw.gateway.config.state_dir
    files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert any(p.name == "gateway-stats.json" for p in files)
    for path in files:
        text = path.read_bytes()
        assert ANTHROPIC_KEY.encode() not in text and OPENAI_KEY.encode() not in text, path
    gw.stop()
    logged = "\n".join(r.getMessage() + " " + str(r.exc_info or "") for r in caplog.records)
    assert caplog.records and ANTHROPIC_KEY not in logged and OPENAI_KEY not in logged
    assert "SECRET" not in caplog.text


def test_openai_streams_are_accounted_without_showing_an_unasked_usage_chunk(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.token, max_retries=0)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=user("count me"), stream=True))
    assert all(chunk.choices for chunk in chunks)  # no choices-less usage chunk the client did not ask for
    assert fake_upstream.calls[-1].json["stream_options"] == {"include_usage": True}
    stats = gw.gateway.stats()
    assert stats["output_tokens"] > 0 and stats["input_tokens"] > 0
    asked = list(client.chat.completions.create(model="gpt-4o-mini", messages=user("and me"), stream=True,
                                                stream_options={"include_usage": True}))
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens > 0


def test_a_backends_fallback_takes_over_when_retries_run_out_and_while_its_circuit_is_open(make_fleet,
                                                                                          fake_upstream) -> None:
    clock = ManualClock()
    toml = fleet_toml(fake_upstream.url, anthropic={"breaker_failures": 1, "max_retries": 0,
                                                    "fallback": ["spare"]})
    toml += (f'\n[backends.spare]\nkind = "anthropic"\nbase_url = "{fake_upstream.url}/spare"\n'
             'max_retries = 0\n')
    gw = start_in_thread(load_config(make_fleet(toml)), ENV, clock=clock)
    try:
        # The spare's base_url has a path the fake does not serve: its 404 proves the spare was called.
        fake_upstream.script(Reply(500))
        with pytest.raises(anthropic.NotFoundError) as info:
            _client(gw).messages.create(model=MODEL, max_tokens=8, messages=user("fails"))
        assert "backend 'spare'" in info.value.message and len(fake_upstream.calls) == 1
        assert gw.gateway.stats()["backends"]["default"]["breaker"] == "open"
        with pytest.raises(anthropic.NotFoundError) as info:
            _client(gw).messages.create(model=MODEL, max_tokens=8, messages=user("goes to the spare"))
        assert "backend 'spare'" in info.value.message and len(fake_upstream.calls) == 1  # the primary was skipped
    finally:
        gw.stop()


def test_coordinator_gateway_process_serves_and_stops_cleanly_on_sigterm(make_fleet, fake_upstream) -> None:
    root = make_fleet(fleet_toml(fake_upstream.url))
    code = ("import sys; from coordinator.config import load_config; "
            "from coordinator.gateway.server import serve_forever; "
            "serve_forever(load_config(sys.argv[1]), {'ANTHROPIC_API_KEY': 'k', 'OPENAI_API_KEY': 'k'})")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)])
    state = root / ".coordinator" / "gateway.json"
    try:
        wait_until(lambda: state.exists() and json.loads(state.read_text())["pid"] == proc.pid, 20, "gateway.json")
        info = json.loads(state.read_text())
        client = anthropic.Anthropic(base_url=info["url"], api_key=info["token"], max_retries=0)
        assert client.messages.create(model=MODEL, max_tokens=8, messages=user("hi")).content[0].text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not state.exists()
    assert json.loads((root / ".coordinator" / "gateway-stats.json").read_text())["requests"] == 1


def test_the_rpm_bucket_paces_requests_through_the_gateway(start_gateway, fake_upstream) -> None:
    clock = ManualClock()
    gw = start_gateway(clock=clock, anthropic={"rpm": 60})
    started = clock.now()

    async def main() -> None:
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.token, max_retries=0)
        await asyncio.gather(*[client.messages.create(model=MODEL, max_tokens=8, messages=user(f"r{i}"))
                               for i in range(10)])
        await client.close()

    asyncio.run(main())
    assert len(fake_upstream.calls) == 10
    # 60 rpm with one second of burst: ten calls need at least nine seconds of (virtual) time.
    assert clock.now() - started >= 9.0 - 1e-6
