"""Prometheus metrics of one gateway, in a registry of its own (several gateways may share a process).

Totals that the ledger already keeps (requests, upstream calls, dedup, tokens, USD)
are read from it when ``/metrics`` is scraped rather than counted twice on the
request path; only what the ledger does not know is counted here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
_LEDGER_COUNTERS = (("requests", "Requests admitted"), ("upstream_calls", "Upstream attempts"),
                    ("dedup_joined", "Requests that joined a flight in progress"),
                    ("dedup_hits", "Requests answered from the response cache"),
                    ("usd", "Estimated USD spent"), ("usd_saved", "Estimated USD saved by dedup and caching"),
                    ("tokens_saved", "Tokens of requests that dedup answered without an upstream call"))
_ALIAS_COUNTERS = (("requests", "Requests routed to each [models] alias"),
                   ("usd", "Estimated USD spent per [models] alias"))
_TOKEN_KINDS = (("input_tokens", "input"), ("output_tokens", "output"), ("cache_write_tokens", "cache_write"),
                ("cache_read_tokens", "cache_read"))


class _LedgerCollector(Collector):
    """Exposes the ledger's totals, per model for tokens, at scrape time."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[CounterMetricFamily]:
        """One family per ledger total, plus tokens by model and kind."""
        data = self.snapshot()
        for key, doc in _LEDGER_COUNTERS:
            yield CounterMetricFamily(f"coordinator_gateway_{key}", doc, value=data.get(key, 0))
        tokens = CounterMetricFamily("coordinator_gateway_tokens", "Tokens billed upstream, by model and kind",
                                     labels=["model", "kind"])
        for model, row in (data.get("models") or {}).items():
            for key, kind in _TOKEN_KINDS:
                tokens.add_metric([model, kind], row.get(key, 0))
        yield tokens
        for key, doc in _ALIAS_COUNTERS:
            family = CounterMetricFamily(f"coordinator_gateway_alias_{key}", doc, labels=["alias"])
            for alias, row in (data.get("aliases") or {}).items():
                family.add_metric([alias], row.get(key, 0))
            yield family


class GatewayMetrics:
    """Counters and gauges for ``GET /metrics``; labels are bounded (reason, backend, outcome, model)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rejected = Counter("coordinator_gateway_rejected", "Requests refused before any work, by reason",
                                ["reason"], registry=r)
        self.upstream_outcomes = Counter("coordinator_gateway_upstream_outcomes", "Upstream attempts, by outcome",
                                         ["backend", "outcome"], registry=r)
        self.in_flight = Gauge("coordinator_gateway_flights", "Upstream flights in progress", registry=r)
        self.pending = Gauge("coordinator_gateway_pending_requests", "Requests admitted and not yet answered",
                             registry=r)
        self.cache_bytes = Gauge("coordinator_gateway_cache_bytes", "Bytes held by the response cache", registry=r)
        self.breaker = Gauge("coordinator_gateway_breaker_state", "Circuit state: 0 closed, 1 half-open, 2 open",
                             ["backend"], registry=r)
        self.latency = Histogram("coordinator_gateway_upstream_seconds", "Upstream time to first byte",
                                 ["backend"], registry=r,
                                 buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.limiter_wait = Histogram("coordinator_gateway_limiter_wait_seconds",
                                      "Time requests waited for a backend's rate limits or concurrency cap",
                                      ["backend"], registry=r, buckets=(0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.queued = Gauge("coordinator_gateway_limiter_queued", "Requests waiting in a backend's limiter",
                            ["backend"], registry=r)
        self.fallbacks = Counter("coordinator_gateway_fallbacks", "Calls handed to the next hop of their chain",
                                 ["from", "to", "reason"], registry=r)
        self.routed = Counter("coordinator_gateway_routed", "Requests by the alias routing picked, and why",
                              ["alias", "how"], registry=r)
        self.config_generation = Gauge("coordinator_gateway_config_generation",
                                       "The fleet.toml generation the gateway serves (1 at start)", registry=r)
        self.config_reloads = Counter("coordinator_gateway_config_reloads", "fleet.toml reloads, by outcome",
                                      ["outcome"], registry=r)
        self.fleet = FleetGauges(r)
        self._children: dict[tuple, Any] = {}

    def watch_ledger(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        """Expose the ledger's totals (called once, by the gateway that owns both)."""
        self.registry.register(_LedgerCollector(snapshot))

    def child(self, metric: Counter | Gauge | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: the lookup is a measurable cost per request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


class FleetGauges:
    """The fleet beside the gateway: tasks by state, agents, the merge queue (set at scrape time)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.tasks = Gauge("coordinator_tasks", "Tasks by state", ["state"], registry=r)
        self.agents = Gauge("coordinator_agents", "Agent processes by state (dead: not running, not stopped)",
                            ["state"], registry=r)
        self.agents_alive = Gauge("coordinator_agents_alive", "Agent processes alive", registry=r)
        self.merge_waiting = Gauge("coordinator_merge_queue_waiting", "Claims in the merge queue", registry=r)
        self.landed = Gauge("coordinator_merge_queue_landed", "Tasks whose work landed on the target", registry=r)
        self.conflicts = Gauge("coordinator_merge_queue_conflicts", "Merge conflicts met by landings", registry=r)

    def set(self, figures: Mapping[str, Any]) -> None:
        """Take the figures ``report.status.fleet_figures`` built."""
        for state, count in figures["tasks"].items():
            self.tasks.labels(state).set(count)
        self.agents.clear()
        for state, count in figures["agents"].items():
            self.agents.labels(state).set(count)
        self.agents_alive.set(figures["agents_alive"])
        queue = figures.get("merge_queue") or {}
        self.merge_waiting.set(queue.get("waiting", 0))
        self.landed.set(queue.get("landed", 0))
        self.conflicts.set(queue.get("conflicts", 0))
