"""Gateways on several hosts sharing their work through the fleet's Redis (DESIGN §13, docs/gateway.md).

Only when ``[fleet] state`` is a Redis URL: each host runs its own gateway, and
``attach_shared`` fits four shared policies behind the interfaces the gateway already
uses, each in a module of its own and each falling back to the local one while Redis
does not answer (``link``):

- ``flights``: in-flight dedup across hosts (stands in for ``Pipeline.run``), and the
  shared response cache (``cache``) it reads in the same round trip;
- ``budgets``: task and fleet spend and reservations (replaces the proxy's ``Budgets``);
- ``limits``: a backend's rpm / tpm buckets (wraps each upstream's ``Limiter``).

``SharedState.stats`` is the ``shared`` field of the gateway's stats (``status``
shows it), and ``coordinator_gateway_shared_state_up`` the gauge in ``/metrics``.
With the file store nothing here is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..server import Gateway
    from .link import RedisLink

__all__ = ["SharedState", "attach_shared"]


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


def attach_shared(gateway: Gateway) -> SharedState | None:
    """Share ``gateway``'s dedup, cache, limits and budgets through Redis; None with the file store."""
    config = gateway.config
    if config.fleet.state == "file":
        return None
    from prometheus_client import Gauge  # noqa: PLC0415

    from .budgets import SharedBudgets  # noqa: PLC0415  (redis-py is imported only here)
    from .cache import SharedCache  # noqa: PLC0415
    from .flights import SharedFlights  # noqa: PLC0415
    from .limits import SharedLimiter  # noqa: PLC0415
    from .link import RedisLink  # noqa: PLC0415

    link = RedisLink(config.fleet.state, fleet=config.fleet.state_name or config.root.resolve().name,
                     password=config.state_password, clock=gateway.clock)
    proxy, settings = gateway.proxy, config.gateway
    proxy.budgets = budgets = SharedBudgets(gateway.ledger, link)
    cache = SharedCache(link, ttl_s=settings.cache_ttl_s, max_bytes=int(settings.cache_max_mb * 1024 * 1024))
    proxy.pipeline = SharedFlights(proxy.pipeline, link, lease_s=settings.shared_lease_s, cache=cache,
                                   budgets=budgets, ledger=gateway.ledger, clock=gateway.clock)
    for name, upstream in gateway.upstreams.items():
        upstream.limiter = SharedLimiter(upstream.limiter, link, name, upstream.config, gateway.clock)
    gauge = Gauge("coordinator_gateway_shared_state_up", "1 while the fleet's Redis answers (dedup, cache, "
                  "limits, budgets shared across hosts), 0 while this gateway falls back to its own",
                  registry=gateway.metrics.registry)
    gauge.set_function(lambda: 1.0 if link.up else 0.0)
    return SharedState(link)
