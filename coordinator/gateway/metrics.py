"""Prometheus metrics of one gateway, in a registry of its own (several gateways may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class GatewayMetrics:
    """Counters and gauges for ``GET /metrics``; labels are bounded (api, outcome, backend, model)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("coordinator_gateway_requests", "Requests admitted, by API and dedup outcome",
                                ["api", "dedup"], registry=r)
        self.rejected = Counter("coordinator_gateway_rejected", "Requests refused before any work, by reason",
                                ["reason"], registry=r)
        self.upstream_calls = Counter("coordinator_gateway_upstream_calls", "Upstream attempts, by outcome",
                                      ["backend", "outcome"], registry=r)
        self.tokens = Counter("coordinator_gateway_tokens", "Tokens billed upstream, by kind",
                              ["model", "kind"], registry=r)
        self.usd = Counter("coordinator_gateway_usd", "Estimated USD spent", registry=r)
        self.usd_saved = Counter("coordinator_gateway_usd_saved", "Estimated USD saved by dedup and caching",
                                 registry=r)
        self.in_flight = Gauge("coordinator_gateway_flights", "Upstream flights in progress", registry=r)
        self.pending = Gauge("coordinator_gateway_pending_requests", "Requests admitted and not yet answered",
                             registry=r)
        self.cache_bytes = Gauge("coordinator_gateway_cache_bytes", "Bytes held by the response cache", registry=r)
        self.breaker = Gauge("coordinator_gateway_breaker_state", "Circuit state: 0 closed, 1 half-open, 2 open",
                             ["backend"], registry=r)
        self.latency = Histogram("coordinator_gateway_upstream_seconds", "Upstream time to first byte",
                                 ["backend"], registry=r,
                                 buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
