"""The MCP `configure` tool: fleet.toml merged, validated by the loader before it is written, then reloaded."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.mcp_support import call, data, error, fleet_tools
from tests.procs import run_cli

FLEET = """\
# The docs fleet: offline.
[fleet]
agents = 2          # two is plenty
max_usd = 5

[backends.default]
kind = "echo"       # no key needed
latency_ms = 5

[models]
default = { backend = "default", model = "claude-sonnet-4-5" }
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "fleet"
    (folder / "tasks").mkdir(parents=True)
    (folder / "fleet.toml").write_text(FLEET)
    (folder / "fleet.toml").chmod(0o640)
    return folder


class FakeGateway:
    """A real local HTTP server standing in for a gateway (gateway.json names it): scripted answers, calls kept."""

    def __init__(self, root: Path, status: int, body: dict[str, Any]) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                length = int(self.headers.get("content-length", 0))
                fake.calls.append((self.path, self.headers.get("authorization", ""), json.loads(self.rfile.read(length))))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        state = root / ".coordinator"
        state.mkdir(exist_ok=True)
        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        (state / "gateway.json").write_text(json.dumps({"url": url, "pid": os.getpid(), "token": "cgf-fleet"}))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway(root: Path) -> Iterator[Any]:
    made: list[FakeGateway] = []

    def make(status: int, body: dict[str, Any]) -> FakeGateway:
        made.append(FakeGateway(root, status, body))
        return made[-1]
    yield make
    for fake in made:
        fake.close()


def test_a_fragment_merges_into_fleet_toml_keeping_comments_layout_and_mode(root: Path) -> None:
    toml_fragment = '[backends.fast]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nrpm = 60\n'
    json_fragment = {"models": {"cheap": {"backend": "fast", "model": "small"}, "default": {"model": None}},
                     "fleet": {"max_pending": 50, "max_usd": None}, "backends": {"default": {"latency_ms": 9}}}
    first, second = call(fleet_tools(root), ("configure", {"fragment": toml_fragment}),
                         ("configure", {"fragment": json_fragment}))
    assert data(first) == {"path": str(root / "fleet.toml"), "keys": ["backends.fast.base_url", "backends.fast.kind",
                           "backends.fast.rpm"], "written": True, "reload": {
                           "status": "no_gateway", "message": "no gateway is running; the next one starts with this "
                                                              "fleet.toml"}}
    assert data(second)["keys"] == ["backends.default.latency_ms", "fleet.max_pending", "fleet.max_usd",
                                    "models.cheap.backend", "models.cheap.model", "models.default.model"]
    text = (root / "fleet.toml").read_text()
    for kept in ("# The docs fleet: offline.", "agents = 2          # two is plenty", 'kind = "echo"       # no key'):
        assert kept in text
    assert "max_usd" not in text and "max_pending = 50" in text and "latency_ms = 9" in text
    assert (root / "fleet.toml").stat().st_mode & 0o777 == 0o640
    config = json.loads(run_cli(root, "status", "--json").stdout)  # every command reads the new file
    assert config["healthy"]
    from coordinator.config import load_config

    loaded = load_config(root)
    assert loaded.backends["fast"].rpm == 60 and loaded.models["cheap"].backend == "fast"
    assert loaded.models["default"].model is None and loaded.fleet.max_usd == 0 and loaded.fleet.max_pending == 50


def test_an_invalid_result_is_refused_with_the_loaders_line_and_nothing_is_written(root: Path, tmp_path: Path) -> None:
    fragments = [{"models": {"cheap": {"backend": "missing"}}}, {"backends": {"default": {"kind": "telepathy"}}},
                 '[backends.default]\nrpm = -1\n']
    results = call(fleet_tools(root), *[("configure", {"fragment": f}) for f in fragments])
    shadow = tmp_path / "shadow"
    (shadow / "tasks").mkdir(parents=True)
    for fragment, result in zip(fragments, results):
        # The tool's error is the line the CLI prints for the same merged file.
        (shadow / "fleet.toml").write_text(_merged_by_hand(fragment))
        cli = run_cli(shadow, "status")
        assert cli.returncode == 2
        assert error(result) == cli.stderr.strip().removeprefix("error: ").replace(str(shadow), str(root))
    assert (root / "fleet.toml").read_text() == FLEET


def _merged_by_hand(fragment: Any) -> str:
    """FLEET with the fragment's values written in by plain text edits (independent of config_edit)."""
    if fragment == {"models": {"cheap": {"backend": "missing"}}}:
        return FLEET + '\n[models.cheap]\nbackend = "missing"\n'
    if fragment == {"backends": {"default": {"kind": "telepathy"}}}:
        return FLEET.replace('kind = "echo"', 'kind = "telepathy"')
    return FLEET.replace("latency_ms = 5", "latency_ms = 5\nrpm = -1")


def test_only_the_live_sections_may_change(root: Path) -> None:
    cases = {
        "[agents.claude]\nkind = \"command\"\n": "agents: 'agents' cannot be changed by configure, only [backends], "
                                                "[models], [[routing]] and [fleet] max_usd / max_pending; edit "
                                                "fleet.toml by hand for the rest",
        '{"fleet": {"agents": 9}}': "fleet.agents: [fleet] agents is read when processes start; change it in "
                                    "fleet.toml by hand (configure changes [backends], [models], [[routing]] and "
                                    "[fleet] max_usd / max_pending)",
        "[backends\n": "fragment: the fragment is not valid TOML",
        '{"models": ': "fragment: the fragment is not valid JSON",
        "": "fragment: the fragment is empty",
        '{"models": 3}': "models: [models] must be a table of named entries",
    }
    results = call(fleet_tools(root), *[("configure", {"fragment": fragment}) for fragment in cases])
    for (fragment, expected), result in zip(cases.items(), results):
        assert error(result).startswith(expected), fragment
    assert (root / "fleet.toml").read_text() == FLEET


def test_the_same_values_again_write_nothing(root: Path) -> None:
    result, = call(fleet_tools(root), ("configure", {"fragment": {"backends": {"default": {"latency_ms": 5}}}}))
    assert data(result)["written"] is False and data(result)["reload"]["status"] == "unchanged"


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, {"reloaded": True}, "reloaded"),
    (404, {"error": {"type": "not_found", "message": "no route"}}, "on_disk"),
    (400, {"error": {"type": "invalid_config", "message": "backends.x: nope"}}, "refused"),
])
def test_a_running_gateway_is_asked_to_reload_with_the_fleet_token(root: Path, gateway: Any, status: int,
                                                                   body: dict[str, Any], expected: str) -> None:
    fake = gateway(status, body)
    result, = call(fleet_tools(root), ("configure", {"fragment": {"fleet": {"max_pending": 7}}}))
    assert data(result)["written"] and data(result)["reload"]["status"] == expected
    assert fake.calls == [("/v1/coordinator/config/reload", "Bearer cgf-fleet", {})]
    if expected == "refused":
        assert data(result)["reload"]["message"].endswith("kept its old config: backends.x: nope")


def test_infer_reports_a_gateway_error_as_one_line(root: Path, gateway: Any) -> None:
    fake = gateway(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
    result, = call(fleet_tools(root), ("infer", {"prompt": "hello", "system": "be brief", "max_tokens": 20}))
    assert error(result) == "the gateway answered 429: slow down"
    path, auth, body = fake.calls[0]
    assert (path, auth) == ("/v1/messages", "Bearer cgf-fleet")
    assert body == {"model": "default", "max_tokens": 20, "system": "be brief",
                    "messages": [{"role": "user", "content": "hello"}]}


def test_routing_rules_are_replaced_as_a_whole_and_checked_by_the_loader(root: Path) -> None:
    from coordinator.config import load_config

    rules = {"models": {"cheap": {"backend": "default", "model": "small"}},
             "routing": [{"name": "docs", "labels": ["docs"], "alias": "cheap"}, {"alias": "default"}]}
    first, second, broken = call(fleet_tools(root), ("configure", {"fragment": rules}),
                                 ("configure", {"fragment": '[[routing]]\nlabels = ["tiny"]\nalias = "cheap"\n'}),
                                 ("configure", {"fragment": {"routing": [{"alias": "nowhere"}]}}))
    assert data(first)["keys"] == ["models.cheap.backend", "models.cheap.model", "routing"]
    assert [(rule.labels, rule.alias) for rule in load_config(root).routing] == [(["tiny"], "cheap")]
    assert data(second)["written"]
    written = (root / "fleet.toml").read_text()
    assert error(broken).startswith(f"{root / 'fleet.toml'}") and "nowhere" in error(broken)
    assert (root / "fleet.toml").read_text() == written
