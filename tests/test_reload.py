"""Live configuration: fleet.toml reloaded under load, refused when broken, `coordinator reload` and the endpoint."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from coordinator.clock import ManualClock
from coordinator.config import load_config
from coordinator.gateway.server import start_in_thread
from coordinator.gateway.tokens import task_token
from coordinator.report.status import build_status
from tests.fake_upstream import Reply, await_until, fake_upstream, wait_until  # noqa: F401 - fixture
from tests.gateway_support import ENV
from tests.procs import events, run_cli
from tests.routing_support import ask, routed_gateway, routing_toml, second_upstream  # noqa: F401 - fixtures

RELOAD = "/v1/coordinator/config/reload"
MODELS = {"default": {"backend": "default", "model": "claude-sonnet-4-6"}}


def _write(root: Path, toml: str) -> None:
    """Replace fleet.toml atomically, as an editor or the MCP configure tool should."""
    temp = root / "fleet.toml.new"
    temp.write_text(toml)
    temp.replace(root / "fleet.toml")


def _stream(client: httpx.AsyncClient, gw, text: str) -> asyncio.Task:
    body = {"model": "default", "max_tokens": 32, "stream": True, "messages": [{"role": "user", "content": text}]}

    async def send() -> tuple[int, str, bytes]:
        async with client.stream("POST", f"{gw.url}/v1/messages", json=body, headers={
                "x-api-key": gw.token, "anthropic-version": "2023-06-01"}) as response:
            return response.status_code, response.headers.get("x-coordinator-routed", ""), await response.aread()
    return asyncio.create_task(send())


def test_a_reload_under_load_fails_no_request_and_moves_only_new_ones(routed_gateway, fake_upstream,
                                                                      second_upstream) -> None:
    old = {"base_url": fake_upstream.url, "max_concurrency": 256, "timeout_s": 120}  # held calls must not time out
    gw = routed_gateway(routing_toml({"default": old}, MODELS))
    root = gw.gateway.config.root
    before = gw.gateway.upstreams["default"]

    async def main() -> list[tuple[int, str, bytes]]:
        fake_upstream.gate.close()  # the first 100 are held at the old upstream while the file changes
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=300)) as client:
            early = [_stream(client, gw, f"early {i}") for i in range(100)]
            await await_until(lambda: fake_upstream.held == 100, 20, "100 requests at the old upstream")
            _write(root, routing_toml({"default": {**old, "base_url": second_upstream.url, "rpm": 600_000}}, MODELS))
            await await_until(lambda: gw.gateway.reloader.current.generation == 2, 10, "the change to be noticed")
            assert gw.gateway.reloader.status()["draining"] == 1
            late = [_stream(client, gw, f"late {i}") for i in range(100)]
            await await_until(lambda: second_upstream.completed == 100, 20, "100 requests at the new upstream")
            fake_upstream.gate.open()
            return list(await asyncio.gather(*early, *late))

    results = asyncio.run(main())
    assert all(status == 200 and b"event: message_stop" in body for status, _, body in results)
    assert all(b"event: error" not in body for _, _, body in results)
    texts = lambda fake: {c.json["messages"][0]["content"] for c in fake.calls}  # noqa: E731
    assert texts(fake_upstream) == {f"early {i}" for i in range(100)}
    assert texts(second_upstream) == {f"late {i}" for i in range(100)}
    after = gw.gateway.upstreams["default"]
    assert after is not before and after.limiter is before.limiter and after.limiter.rpm.rate == 10_000
    wait_until(lambda: before.serial in gw.gateway.reloader.closed, 10, "the old connection to drain and close")
    assert gw.gateway.reloader.retired == []


def test_a_broken_fleet_toml_is_refused_and_the_old_one_keeps_serving(routed_gateway, fake_upstream) -> None:
    good = routing_toml({"default": {"base_url": fake_upstream.url}}, MODELS)
    gw = routed_gateway(good)
    root = gw.gateway.config.root
    config = load_config(root)
    _write(root, good + '\n[[routing]]\nlabels = ["docs"]\nalias = "cheep"\n')
    # The refusal is served at once and written to events.jsonl just after: wait for both.
    wait_until(lambda: gw.gateway.reloader.refused is not None
               and any(e["event"] == "config_refused" for e in events(root)), 10, "the refusal")
    assert ask(gw, gw.token).status_code == 200  # still served, on generation 1
    refused = build_status(config, time.time())
    error = refused["gateway"]["config"]["refused"]["error"]
    assert "fleet.toml" in error and "routing[0].alias: alias 'cheep' is not defined" in error
    assert refused["gateway"]["config"]["generation"] == 1 and not refused["healthy"]
    assert any("refused fleet.toml" in problem for problem in refused["problems"])
    over_http = httpx.get(f"{gw.url}/v1/coordinator/status", headers={"authorization": f"Bearer {gw.token}"})
    assert over_http.json()["gateway"]["config"]["refused"]["error"] == error
    logged = [e for e in events(root) if e["event"] == "config_refused"]
    assert len(logged) == 1 and logged[0]["error"] == error and "sk-" not in json.dumps(logged)
    _write(root, good + "\n[models.cheap]\nmodel = \"claude-haiku-4-5\"\n")
    wait_until(lambda: gw.gateway.reloader.current.generation == 2
               and any(e["event"] == "config_reloaded" for e in events(root)), 10, "the fixed file to load")
    assert gw.gateway.reloader.refused is None
    assert [e["changed"] for e in events(root) if e["event"] == "config_reloaded"] == [["models"]]
    assert build_status(config, time.time())["healthy"]


def test_coordinator_reload_and_the_endpoint(routed_gateway, fake_upstream) -> None:
    good = routing_toml({"default": {"base_url": fake_upstream.url}}, MODELS)
    gw = routed_gateway(good)
    root = gw.gateway.config.root
    assert httpx.post(gw.url + RELOAD).status_code == 401
    assert httpx.post(gw.url + RELOAD, headers={"x-api-key": task_token(gw.token, "t")}).status_code == 403
    same = httpx.post(gw.url + RELOAD, headers={"authorization": f"Bearer {gw.token}"})
    assert same.json() == {"reloaded": True, "generation": 1, "changed": []}
    _write(root, good + "\n[models.cheap]\nmodel = \"claude-haiku-4-5\"\n")
    done = run_cli(root, "reload", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["generation"] == 2  # the CLI's reload, or the watcher's a moment before it
    listed = httpx.get(f"{gw.url}/v1/models", headers={"x-api-key": gw.token}).json()
    assert "cheap" in {model["id"] for model in listed["data"]}
    _write(root, good + '\n[backends.default]\nrpm = "fast"\n')
    broken = httpx.post(gw.url + RELOAD, headers={"authorization": f"Bearer {gw.token}"})
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_config"
    assert "fleet.toml" in broken.json()["error"]["message"]
    cli = run_cli(root, "reload")
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and cli.stderr.startswith("error: ")
    assert gw.gateway.reloader.current.generation == 2


def test_unchanged_backends_keep_their_state_changed_limits_are_retuned_and_removed_ones_drain(
        routed_gateway, fake_upstream, second_upstream) -> None:
    fast = {"base_url": fake_upstream.url, "breaker_failures": 1, "max_retries": 0}
    models = {"default": {"backend": "default"}, "b": {"backend": "b"}, "gone": {"backend": "gone"}}
    gw = routed_gateway(routing_toml({"default": fast, "b": fast, "gone": fast}, models), clock=ManualClock())
    root = gw.gateway.config.root
    fake_upstream.script(Reply(500), Reply(500))
    assert ask(gw, gw.token, model="default").status_code == 500 and ask(gw, gw.token, model="b").status_code == 500
    a, b, gone = (gw.gateway.upstreams[name] for name in ("default", "b", "gone"))
    assert a.breaker.state == b.breaker.state == "open"
    _write(root, routing_toml({"default": {**fast, "base_url": second_upstream.url}, "b": {**fast, "rpm": 120},
                               "c": fast}, {"default": {"backend": "default"}, "b": {"backend": "b"}}))
    reloaded = httpx.post(gw.url + RELOAD, headers={"authorization": f"Bearer {gw.token}"}).json()
    assert gw.gateway.reloader.current.generation == 2, reloaded
    now = gw.gateway.upstreams
    assert now["default"] is not a and now["default"].breaker.state == "closed"  # a new connection: fresh breaker
    assert now["default"].limiter is a.limiter  # ...but the same account's limits
    assert now["b"] is b and b.breaker.state == "open" and b.limiter.rpm.rate == 2.0  # retuned in place
    assert "c" in now and now["c"].breaker.state == "closed" and "gone" not in now
    wait_until(lambda: {a.serial, gone.serial} <= gw.gateway.reloader.closed, 10, "replaced and removed to close")
    assert b.serial not in gw.gateway.reloader.closed
    assert ask(gw, gw.token, model="default").status_code == 200 and len(second_upstream.calls) == 1


def test_a_gateway_started_with_a_config_older_than_the_file_serves_the_file(make_fleet, fake_upstream) -> None:
    good = routing_toml({"default": {"base_url": fake_upstream.url}}, MODELS)
    root = make_fleet(good)
    stale = load_config(root)  # what `coordinator run` holds when it restarts its gateway
    _write(root, good + "\n[models.cheap]\nmodel = \"claude-haiku-4-5\"\n")
    gw = start_in_thread(stale, ENV)
    try:
        wait_until(lambda: gw.gateway.reloader.current.generation == 2, 10, "the file's configuration")
        assert "cheap" in gw.gateway.reloader.current.config.models
    finally:
        gw.stop()
