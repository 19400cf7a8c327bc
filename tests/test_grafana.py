"""docs/grafana/coordinator.json: every metric its PromQL names is one a live gateway's /metrics exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from coordinator.clock import ManualClock
from tests.fake_upstream import Reply, fake_upstream  # noqa: F401 - fixture
from tests.routing_support import ask, routed_gateway, routing_toml, second_upstream  # noqa: F401 - fixtures

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "coordinator.json"
METRIC = re.compile(r"\b(coordinator_[a-z0-9_]+)\b")
# What the dashboard must show (issue 12): each of these families appears in some expression.
REQUIRED = ("coordinator_gateway_requests_total", "coordinator_gateway_upstream_calls_total",
            "coordinator_gateway_dedup_hits_total", "coordinator_gateway_dedup_joined_total",
            "coordinator_gateway_tokens_saved_total", "coordinator_gateway_usd_saved_total",
            "coordinator_gateway_upstream_seconds_bucket", "coordinator_gateway_breaker_state",
            "coordinator_gateway_limiter_wait_seconds_bucket", "coordinator_tasks", "coordinator_agents_alive",
            "coordinator_merge_queue_landed", "coordinator_gateway_fallbacks_total", "coordinator_gateway_routed_total")


def _exprs(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def _exposed(text: str) -> set[str]:
    """Every sample name in the exposition, plus the names each declared family may have samples under."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            names.add(family)
            if kind == "histogram":
                names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_metric_of_the_dashboard_is_in_a_live_gateways_metrics(routed_gateway, fake_upstream,
                                                                      second_upstream) -> None:
    toml = routing_toml({"default": {"base_url": fake_upstream.url, "max_retries": 0, "rpm": 60},
                         "spare": {"base_url": second_upstream.url}},
                        {"default": {"backend": "default", "fallback": ["backup"]}, "backup": {"backend": "spare"}})
    gw = routed_gateway(toml, tasks={"a.toml": 'prompt = "x"\n'}, clock=ManualClock())
    fake_upstream.script(Reply(529))  # one fallback, so the counter has a sample too
    for text in ("one", "two", "two"):  # a fallback, a rate-limit wait (60 rpm, virtual time), a cache hit
        assert ask(gw, gw.token, text).status_code == 200
    scrape = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {gw.token}"})
    assert scrape.status_code == 200
    exposed = _exposed(scrape.text)
    dashboard = json.loads(DASHBOARD.read_text())
    named = {name for expr in _exprs(dashboard) for name in METRIC.findall(expr)}
    assert set(REQUIRED) <= named
    assert sorted(named - exposed) == []
    assert 'coordinator_tasks{state="pending"} 1.0' in scrape.text
    assert "coordinator_gateway_fallbacks_total{" in scrape.text and "coordinator_gateway_tokens_saved_total" in scrape.text
    assert re.search(r'coordinator_gateway_limiter_wait_seconds_count\{backend="default"\} [1-9]', scrape.text)


def test_the_dashboard_is_well_formed_for_grafana() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["title"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
