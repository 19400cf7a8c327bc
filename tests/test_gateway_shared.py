"""Two gateways ("hosts") on one Redis share their work: one upstream call, one cache, one budget, one rpm."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx

from coordinator.gateway.tokens import task_token
from tests.fake_upstream import FakeUpstream, await_until, fake_upstream, wait_until  # noqa: F401 - fixture
from tests.gateway_support import user
from tests.redis_support import RedisServer, redis_server  # noqa: F401 - fixture
from tests.shared_support import blocked_readers, two_gateways  # noqa: F401 - fixture

N = 100
MODEL = "claude-sonnet-4-6"
PROMPT = "summarise the design document"
HEADERS = {"anthropic-version": "2023-06-01"}


async def _post(client: httpx.AsyncClient, gw: object, body: dict, token: str | None = None) -> tuple[int, str, bytes]:
    """One request through ``gw``, its body read whole (streamed or not): status, dedup header, bytes."""
    headers = {**HEADERS, "x-api-key": token or gw.token}
    async with client.stream("POST", f"{gw.url}/v1/messages", json=body, headers=headers) as response:
        data = b"".join([chunk async for chunk in response.aiter_bytes()])
        return response.status_code, response.headers.get("x-coordinator-dedup", ""), data


def _split_between(gws: tuple, fake: FakeUpstream, server: RedisServer, body: dict) -> list[tuple[int, str, bytes]]:
    """N identical requests, half to each gateway, held at the upstream until all wait; then answered."""
    a, b = gws
    fake.gate.close()

    async def main() -> list:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=N + 10)) as client:
            calls = [asyncio.create_task(_post(client, (a, b)[i % 2], body)) for i in range(N)]
            await await_until(lambda: a.gateway.proxy.pending == b.gateway.proxy.pending == N // 2, 20,
                              "every request waiting in its gateway")
            await await_until(lambda: fake.held == 1 and blocked_readers(server) >= 1, 20,
                              "one call at the upstream, the other host following it")
            fake.gate.open()
            return await asyncio.gather(*calls)

    return asyncio.run(main())


def _shared_totals(gws: tuple) -> dict[str, float]:
    stats = [gw.gateway.stats() for gw in gws]
    return {key: sum(s[key] for s in stats) for key in ("requests", "upstream_calls", "dedup_joined", "dedup_hits")}


def test_100_identical_requests_on_two_gateways_make_one_upstream_call(two_gateways, fake_upstream,
                                                                      redis_server) -> None:
    gws = two_gateways()
    body = {"model": MODEL, "max_tokens": 64, "messages": user(PROMPT)}
    results = _split_between(gws, fake_upstream, redis_server, body)
    assert len(fake_upstream.calls) == 1
    assert {status for status, _, _ in results} == {200}
    assert len({data for _, _, data in results}) == 1  # byte-identical, on both hosts
    assert json.loads(results[0][2])["content"][0]["text"] == "reply to: " + PROMPT
    assert _shared_totals(gws) == {"requests": N, "upstream_calls": 1, "dedup_joined": N - 1, "dedup_hits": 0}
    assert all(gw.gateway.stats()["shared"]["up"] for gw in gws)
    assert Counter(how for _, how, _ in results) == {"miss": 1, "joined": N - 1}  # the header says who answered


def test_100_identical_streaming_requests_on_two_gateways_get_the_same_bytes(two_gateways, fake_upstream,
                                                                            redis_server) -> None:
    gws = two_gateways()
    body = {"model": MODEL, "max_tokens": 64, "messages": user(PROMPT), "stream": True}
    results = _split_between(gws, fake_upstream, redis_server, body)
    assert len(fake_upstream.calls) == 1
    streams = {data for _, _, data in results}
    assert len(streams) == 1
    stream = streams.pop()
    assert stream.startswith(b"event: message_start") and stream.rstrip().endswith(b'{"type":"message_stop"}')
    assert _shared_totals(gws)["dedup_joined"] == N - 1
    assert Counter(how for _, how, _ in results) == {"miss": 1, "joined": N - 1}


def _answered_then_asked(server: RedisServer, first: tuple, *repeats: tuple) -> list[tuple[int, str, bytes]]:
    """Send ``first`` (gateway, body, token), wait for its reply in the shared cache, then each repeat in turn."""
    async def main() -> list:
        async with httpx.AsyncClient(timeout=30) as client:
            results = [await _post(client, *first)]
            await await_until(lambda: len(server.client().keys("coordinator:{fleet:shared}:gw:cache:*")) == 1, 10,
                              "the reply in the shared cache")
            return results + [await _post(client, *repeat) for repeat in repeats]

    return asyncio.run(main())


def test_a_repeat_on_the_other_host_is_served_from_the_shared_cache(two_gateways, fake_upstream,
                                                                   redis_server) -> None:
    a, b = two_gateways()
    body = {"model": MODEL, "max_tokens": 64, "messages": user(PROMPT)}
    first, streamed, again = _answered_then_asked(redis_server, (a, body), (b, {**body, "stream": True}), (b, body))
    assert len(fake_upstream.calls) == 1
    assert again[2] == first[2] and streamed[0] == 200 and b"message_stop" in streamed[2]
    assert (streamed[1], again[1]) == ("hit", "hit")  # the shared cache answered the flight; then b's own cache
    stats = b.gateway.stats()
    assert stats["dedup_hits"] == 2 and stats["upstream_calls"] == 0 and stats["dedup_joined"] == 0


def test_a_retried_attempt_is_not_served_the_other_hosts_cached_answer(two_gateways, fake_upstream,
                                                                       redis_server) -> None:
    a, b = two_gateways()
    body = {"model": MODEL, "max_tokens": 64, "messages": user(PROMPT)}
    _answered_then_asked(redis_server, (a, body, task_token(a.token, "t")),
                         (b, body, task_token(b.token, "t", attempt=2)))
    assert len(fake_upstream.calls) == 2


def _flood(gws: tuple, fake: FakeUpstream, tokens: list[str], n: int) -> list[int]:
    """``n`` distinct requests, alternately to each gateway, held at the upstream until each is admitted or refused."""
    fake.gate.close()

    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            tasks = [asyncio.create_task(_post(client, gws[i % 2], {"model": MODEL, "max_tokens": 16,
                                                                    "messages": user(f"question {i:02d}")},
                                               tokens[i % 2])) for i in range(n)]
            await await_until(lambda: sum(t.done() for t in tasks) + fake.held == n, 20, "every request decided")
            fake.gate.open()
            return [status for status, _, _ in await asyncio.gather(*tasks)]

    return asyncio.run(main())


def _estimate_usd(body: dict) -> float:
    """The gateway's reservation for ``body``: input estimated at 4 bytes a token, plus max_tokens out, at Sonnet's."""
    size = len(json.dumps(body, separators=(",", ":")).encode())
    return (size // 4 * 3.0 + body["max_tokens"] * 15.0) / 1e6


def test_a_tasks_max_usd_holds_across_both_gateways(two_gateways, fake_upstream, redis_server) -> None:
    gws = two_gateways()
    limit = 0.002
    one = _estimate_usd({"model": MODEL, "max_tokens": 16, "messages": user("question 00")})
    statuses = _flood(gws, fake_upstream, [task_token(gw.token, "t", max_usd=limit) for gw in gws], 40)
    # Every admitted call holds its estimate until it ends, so the fleet admits what fits in one budget;
    # each gateway on its own would have admitted that many again.
    assert 1 <= statuses.count(200) <= int(limit / one)
    assert statuses.count(402) == 40 - statuses.count(200) and len(fake_upstream.calls) == statuses.count(200)
    spent = sum(gw.gateway.stats()["tasks"]["t"]["usd"] for gw in gws)
    assert spent <= limit + one
    def shared() -> dict[str, str]:
        return redis_server.client().hgetall("coordinator:{fleet:shared}:gw:budget:task:t")

    wait_until(lambda: float(shared()["rusd"]) < 1e-9, 10, "every hold settled")
    assert abs(float(shared()["usd"]) - spent) < 1e-9  # what both gateways billed, counted once


def test_after_a_flush_the_shared_spend_is_every_hosts_ledger_again(two_gateways, fake_upstream,
                                                                       redis_server) -> None:
    gws = two_gateways()
    limit = 0.002
    one = _estimate_usd({"model": MODEL, "max_tokens": 16, "messages": user("question 00")})
    tokens = [task_token(gw.token, "t", max_usd=limit) for gw in gws]
    first = _flood(gws, fake_upstream, tokens, 40)
    key = "coordinator:{fleet:shared}:gw:budget:task:t"
    wait_until(lambda: float(redis_server.client().hget(key, "rusd") or 1) < 1e-9, 10, "every hold settled")
    spent = sum(gw.gateway.stats()["tasks"]["t"]["usd"] for gw in gws)
    assert spent > 0 and {status for status in first if status != 402} == {200}
    redis_server.client().flushall()  # the shared spend is gone; each host's ledger still has its part
    wait_until(lambda: abs(float(redis_server.client().hget(key, "usd") or 0) - spent) < 1e-9, 10,
               "both hosts' ledgers added back")
    again = _flood(gws, fake_upstream, tokens, 40)
    # The budget was spent before the flush: at most the one estimate of overshoot it always allows.
    after = sum(gw.gateway.stats()["tasks"]["t"]["usd"] for gw in gws)
    assert after <= limit + one, (first.count(200), again.count(200))


def test_the_fleets_max_usd_holds_across_both_gateways(two_gateways, fake_upstream) -> None:
    gws = two_gateways(fleet={"max_usd": 0.002})
    one = _estimate_usd({"model": MODEL, "max_tokens": 16, "messages": user("question 00")})
    statuses = _flood(gws, fake_upstream, [gw.token for gw in gws], 40)  # fleet tokens: the fleet's budget only
    assert 1 <= statuses.count(200) <= int(0.002 / one) and statuses.count(402) == 40 - statuses.count(200)


def _paced(gws: tuple, fake: FakeUpstream, model: str, calls: int = 6) -> list[float]:
    """``calls`` requests for ``model``, alternating gateways, all at once: when each reached the upstream."""
    seen: list[float] = []
    fake.responder = lambda call: seen.append(time.monotonic())  # None: the default answer

    async def main() -> list:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*[_post(client, gws[i % 2], {"model": model, "max_tokens": 16,
                                                                      "messages": user(f"question {i}")})
                                          for i in range(calls)])

    assert {status for status, _, _ in asyncio.run(main())} == {200}
    assert len(seen) == calls
    return sorted(seen)


def test_an_rpm_limit_holds_across_both_gateways(two_gateways, fake_upstream) -> None:
    gws = two_gateways(anthropic={"rpm": 60})  # one call a second, a burst of one, for the fleet
    seen = _paced(gws, fake_upstream, MODEL)
    # Each gateway alone would let one call a second through: two together at once, then pairs.
    busiest = max(sum(1 for t in seen if start <= t < start + 0.5) for start in seen)
    assert busiest == 1, f"calls at {[round(t - seen[0], 2) for t in seen]}"


def test_a_backend_added_by_a_reload_shares_its_rpm_limit_across_both_gateways(two_gateways,
                                                                               fake_upstream) -> None:
    gws = two_gateways()
    for gw in gws:  # the same edit on both hosts: a new backend with an rpm limit, and an alias to it
        path = gw.gateway.config.config_path
        path.write_text(path.read_text() + 'added = { backend = "added", model = "claude-sonnet-4-6" }\n\n'
                        f'[backends.added]\nkind = "anthropic"\nbase_url = "{fake_upstream.url}"\nrpm = 60\n')
        answer = httpx.post(f"{gw.url}/v1/coordinator/config/reload", headers={"x-api-key": gw.token}, timeout=30)
        assert answer.status_code == 200, answer.text
    seen = _paced(gws, fake_upstream, "added")
    busiest = max(sum(1 for t in seen if start <= t < start + 0.5) for start in seen)
    assert busiest == 1, f"calls at {[round(t - seen[0], 2) for t in seen]}"