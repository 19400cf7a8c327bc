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
                    ("usd", "Estimated USD spent"), ("usd_saved", "Estimated USD saved by dedup and caching"))
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
