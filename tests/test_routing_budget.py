"""Budget-aware downgrades through a real gateway, the accounting that shows them, and dedup across aliases."""

from __future__ import annotations

import asyncio
import time

import httpx

from coordinator.config import load_config
from coordinator.gateway.tokens import task_token
from coordinator.report.rows import task_detail
from coordinator.report.status import build_status
from tests.fake_upstream import await_until, fake_upstream  # noqa: F401 - fixture
from tests.routing_support import (CHEAP, STRONG, ask, routed_gateway, routing_toml,  # noqa: F401 - fixtures
                                   second_upstream)

MODEL = "claude-opus-4-5"  # both aliases call the same upstream model, on different backends
TASKS = {"rich.toml": 'prompt = "x"\nmax_usd = 1.0\n', "poor.toml": 'prompt = "x"\nmax_usd = 0.01\n',
         "poor2.toml": 'prompt = "x"\nmax_usd = 0.01\n', "broke.toml": 'prompt = "x"\nmax_usd = 0.0005\n'}


def _toml(strong_url: str, cheap_url: str) -> str:
    # max_tokens 1000 costs $0.075 at "default" and $0.00125 at "cheap": a $0.01 budget fits only "cheap".
    return routing_toml({"default": {"base_url": strong_url}, "cheapb": {"base_url": cheap_url}},
                        {"default": {"backend": "default", "model": MODEL, "downgrade": "cheap", **STRONG},
                         "cheap": {"backend": "cheapb", "model": MODEL, **CHEAP}})


def _token(gw, task: str, max_usd: float) -> str:
    return task_token(gw.token, task, max_usd=max_usd)


def test_a_task_whose_budget_fits_only_the_cheap_alias_is_routed_there(routed_gateway, fake_upstream,
                                                                       second_upstream) -> None:
    gw = routed_gateway(_toml(fake_upstream.url, second_upstream.url), tasks=TASKS)
    rich = ask(gw, _token(gw, "rich", 1.0), max_tokens=1000)
    poor = ask(gw, _token(gw, "poor", 0.01), "something else", max_tokens=1000)
    assert rich.status_code == poor.status_code == 200
    assert rich.headers["x-coordinator-routed"] == "default" and poor.headers["x-coordinator-routed"] == "cheap"
    assert len(fake_upstream.calls) == 1 and len(second_upstream.calls) == 1
    stats = gw.gateway.stats()
    assert set(stats["task_aliases"]["poor"]) == {"cheap"} and set(stats["task_aliases"]["rich"]) == {"default"}
    used = stats["task_aliases"]["poor"]["cheap"]
    assert used["requests"] == 1 and 0 < used["usd"] == (used["input_tokens"] * 0.25 + used["output_tokens"] * 1.25) / 1e6
    metrics = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {gw.token}"}).text
    assert 'coordinator_gateway_routed_total{alias="cheap",how="downgrade"} 1.0' in metrics
    # `show` and `status` display it.
    gw.call(lambda: gw.gateway.save_stats(force=True))
    config = load_config(gw.gateway.config.root)
    detail = task_detail(config, "poor")
    assert set(detail["routing"]) == {"cheap"} and detail["routing"]["cheap"]["requests"] == 1
    aliases = build_status(config, time.time())["gateway"]["aliases"]
    assert aliases["cheap"]["requests"] == 1 and aliases["default"]["requests"] == 1


def test_402_names_the_budget_and_the_fix_when_no_alias_of_the_chain_fits(routed_gateway, fake_upstream,
                                                                         second_upstream) -> None:
    gw = routed_gateway(_toml(fake_upstream.url, second_upstream.url))
    refused = ask(gw, _token(gw, "broke", 0.0005), max_tokens=1000)
    assert refused.status_code == 402 and "x-coordinator-routed" not in refused.headers
    message = refused.json()["error"]["message"]
    assert "'broke'" in message and "$0.0005 budget" in message and "raise max_usd in its task file" in message
    assert "default → cheap" in message
    direct = ask(gw, _token(gw, "broke", 0.0005), model="cheap", max_tokens=1000)  # an alias with no downgrade
    assert direct.status_code == 402 and "raise max_usd" in direct.json()["error"]["message"]
    assert fake_upstream.calls == [] and second_upstream.calls == []


def test_dedup_joins_identical_requests_only_when_they_route_to_the_same_place(routed_gateway, fake_upstream,
                                                                             second_upstream) -> None:
    gw = routed_gateway(_toml(fake_upstream.url, second_upstream.url))

    async def together(tokens: list[str], text: str, gates: list) -> list[httpx.Response]:
        for fake in gates:
            fake.gate.close()
        body = {"model": "default", "max_tokens": 1000, "messages": [{"role": "user", "content": text}]}
        async with httpx.AsyncClient(timeout=30) as client:
            sent = [asyncio.create_task(client.post(f"{gw.url}/v1/messages", json=body, headers={
                "x-api-key": token, "anthropic-version": "2023-06-01"})) for token in tokens]
            await await_until(lambda: gw.gateway.proxy.pending == len(tokens), 10, "every request in the gateway")
            await await_until(lambda: sum(f.held for f in gates) >= 1, 10, "a call at an upstream")
            for fake in gates:
                fake.gate.open()
            return list(await asyncio.gather(*sent))

    # Same body, but one task can afford the strong alias and the other only the cheap one: two calls.
    rich, poor = asyncio.run(together([_token(gw, "rich", 1.0), _token(gw, "poor", 0.01)], "same question",
                                      [fake_upstream, second_upstream]))
    assert [r.headers["x-coordinator-routed"] for r in (rich, poor)] == ["default", "cheap"]
    assert {r.headers["x-coordinator-dedup"] for r in (rich, poor)} == {"miss"}
    assert len(fake_upstream.calls) == 1 and len(second_upstream.calls) == 1
    # Two tasks routed to the same alias share one call.
    first, second = asyncio.run(together([_token(gw, "poor", 0.01), _token(gw, "poor2", 0.01)], "shared question",
                                         [second_upstream]))
    assert sorted(r.headers["x-coordinator-dedup"] for r in (first, second)) == ["joined", "miss"]
    assert len(second_upstream.calls) == 2 and gw.gateway.stats()["dedup_joined"] == 1
