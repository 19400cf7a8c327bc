"""[[routing]] rules end to end: a real agent runs tasks through a real gateway, and `coordinator route` agrees."""

from __future__ import annotations

import json

import httpx
import pytest

from coordinator.config import load_config
from coordinator.gateway.client import read_gateway
from coordinator.tasks.cache import load_cached
from tests.fake_upstream import fake_upstream  # noqa: F401 - fixture
from tests.procs import record, run_cli
from tests.routing_support import routed_gateway, routing_toml  # noqa: F401 - fixture

MODELS = {"default": {"backend": "default", "model": "claude-sonnet-4-6"},
          "strong": {"backend": "default", "model": "claude-opus-4-5"},
          "cheap": {"backend": "default", "model": "claude-haiku-4-5"},
          "critic": {"backend": "default", "model": "critic-1"},
          "local": {"backend": "default", "model": "local-small"}}
RULES = [{"name": "docs", "labels": ["docs"], "alias": "cheap"},
         {"name": "urgent", "priority": ["critical"], "alias": "strong"},
         {"name": "review", "agent": ["reviewer"], "alias": "critic"},
         {"name": "small", "max_input_tokens": 200, "alias": "local"}]
LONG = "Explain the claim protocol in detail. " * 60  # ~2,300 bytes: past the "small" rule's 200 tokens
# task id → (task file, expected alias, expected rule): labels, priority, agent, size, and no match at all.
CASES = {
    "docs": ('prompt = "Document the CLI."\nlabels = ["docs", "cli"]\n', "cheap", 0),
    "hotfix": ('prompt = "Fix the crash."\npriority = "critical"\nlabels = ["cli"]\n', "strong", 1),
    "review": ('prompt = "Review the change."\nagent = "reviewer"\n', "critic", 2),
    "small": ('prompt = "Say ok."\npriority = "low"\n', "local", 3),
    "big": (f'prompt = "{LONG}"\n', "default", None),
}


@pytest.fixture
def fleet(routed_gateway, fake_upstream):
    toml = routing_toml({"default": {"base_url": fake_upstream.url}}, MODELS, RULES,
                        {"agents.reviewer": {"kind": "llm", "system": "You review changes."}})
    gw = routed_gateway(toml, tasks={f"{task}.toml": text for task, (text, _, _) in CASES.items()})
    return gw, gw.gateway.config.root


def test_rules_pick_the_alias_and_coordinator_route_agrees_with_the_gateway(fleet, fake_upstream) -> None:
    gw, root = fleet
    ran = run_cli(root, "agent", "--id", "agent-1", "--until-empty", timeout=120)
    assert ran.returncode == 0, ran.stderr
    stats = gw.gateway.stats()
    config = load_config(root)
    tasks = load_cached(config).tasks
    info = read_gateway(config)
    assert info is not None
    for task_id, (_, alias, rule) in CASES.items():
        shown = run_cli(root, "route", "--task", task_id, "--json")
        assert shown.returncode == 0, shown.stderr
        routed = json.loads(shown.stdout)
        assert routed["alias"] == alias, (task_id, routed["why"])
        assert (routed["rule"] or {}).get("index") == rule, (task_id, routed["why"])
        # What the gateway did when the agent ran the task: its accounting, and the model called.
        assert set(stats["task_aliases"][task_id]) == {alias}, task_id
        assert set(record(root, task_id)["usage"]["aliases"]) == {alias}, task_id
        assert routed["model"] in {call.json["model"] for call in fake_upstream.calls}
        # The request the agent sent, sent again with a token minted the way the agent mints it: the header.
        kept = next((root / ".coordinator" / "runs" / task_id).glob("*/request.json")).read_text()
        sent = json.dumps(json.loads(kept)).encode()  # as the llm runner sent it (request.json is indented)
        token = info.task_token(tasks[task_id], "agent-2", agent_name=routed["agent"])
        again = httpx.post(f"{gw.url}/v1/messages", content=sent, timeout=30,
                           headers={"x-api-key": token, "anthropic-version": "2023-06-01"})
        assert again.status_code == 200 and again.headers["x-coordinator-routed"] == alias, task_id
        assert len(sent) // 4 == routed["input_tokens"], task_id  # the same estimate the gateway made
    text = run_cli(root, "route", "--task", "big")
    assert text.returncode == 0 and "big → default" in text.stdout
    assert "routing[3] 'small' does not match: ~" in text.stdout and "input tokens is over 200" in text.stdout
