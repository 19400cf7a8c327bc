"""Gateways on several hosts sharing their work through the fleet's Redis (DESIGN §13, docs/gateway.md).

Only when ``[fleet] state`` is a Redis URL: each host runs its own gateway, and
``attach_shared`` fits four shared policies behind the interfaces the gateway already
uses, each in a module of its own and each falling back to the local one while Redis
does not answer (``link``):

- ``flights``: in-flight dedup across hosts (stands in for ``Pipeline.run``), and the
  shared response cache (``cache``) it reads in the same round trip;
- ``budgets``: task and fleet spend and reservations (replaces the proxy's ``Budgets``);
- ``limits``: a backend's rpm / tpm buckets (wraps each upstream's ``Limiter``).

``state.SharedState.stats`` is the ``shared`` field of the gateway's stats (``status``
shows it), and ``coordinator_gateway_shared_state_up`` the gauge in ``/metrics``.
With the file store nothing below this file is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..server import Gateway
    from .state import SharedState

__all__ = ["attach_shared"]


def attach_shared(gateway: Gateway) -> SharedState | None:
    """Share ``gateway``'s dedup, cache, limits and budgets through Redis; None with the file store."""
    if gateway.config.fleet.state == "file":
        return None
    from .state import attach  # noqa: PLC0415  (redis-py and the shared policies only with a Redis state)

    return attach(gateway)
