"""Wiring one gateway to the fleet's Redis: the shared policies in place of its own, and their link's lifecycle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import Gauge

from ...liveness import HOST
from .budgets import SharedBudgets
from .cache import SharedCache
from .flights import SharedFlights
from .limits import SharedLimiter
from .link import RedisLink

if TYPE_CHECKING:
    from ..server import Gateway


class SharedState:
    """The shared half of one gateway: its Redis link, started and stopped with the gateway."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    async def start(self) -> None:
        """Connect (a Redis that may lose writes refuses the start; one that is down is a degraded start)."""
        await self.link.start()

    async def stop(self) -> None:
        """Close the connections."""
        await self.link.stop()

    def stats(self) -> dict[str, Any]:
        """``{"state", "up", "degraded", "since"}`` for the gateway's stats."""
        return self.link.stats()


def attach(gateway: Gateway) -> SharedState:
    """Put the shared flights, budgets and limiters in place of ``gateway``'s own, and its gauge in /metrics."""
    config = gateway.config
    link = RedisLink(config.fleet.state, fleet=config.fleet.state_name or config.root.resolve().name,
                     password=config.state_password, clock=gateway.clock)
    proxy, settings = gateway.proxy, config.gateway
    proxy.budgets = budgets = SharedBudgets(gateway.ledger, link, f"{HOST}:{config.root.resolve()}")
    link.ticks.append(budgets.check_seeded)  # a flushed Redis gets this host's ledger back within a tick
    cache = SharedCache(link, ttl_s=settings.cache_ttl_s, max_bytes=int(settings.cache_max_mb * 1024 * 1024))
    proxy.pipeline = SharedFlights(proxy.pipeline, link, lease_s=settings.shared_lease_s, cache=cache,
                                   budgets=budgets, ledger=gateway.ledger, clock=gateway.clock)
    for name, upstream in gateway.upstreams.items():
        upstream.limiter = SharedLimiter(upstream.limiter, link, name, upstream.config, gateway.clock)
    # A backend a reload adds shares its buckets too (one it keeps keeps its limiter, already shared).
    gateway.reloader.wrap_limiter = lambda name, local, cfg: SharedLimiter(local, link, name, cfg, gateway.clock)
    gauge = Gauge("coordinator_gateway_shared_state_up", "1 while the fleet's Redis answers (dedup, cache, "
                  "limits, budgets shared across hosts), 0 while this gateway falls back to its own",
                  registry=gateway.metrics.registry)
    gauge.set_function(lambda: 1.0 if link.up else 0.0)
    return SharedState(link)
