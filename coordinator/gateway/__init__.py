"""The shared inference gateway: one local server that collapses redundant context across the fleet.

Modules, one concept each: ``server`` (lifecycle, endpoints), ``proxy`` (the request
path: auth, routing, admission, dedup), ``intake`` (reading a body within its limits),
``budgets`` (the budget rule and reservations), ``pipeline`` (the upstream half:
warm-up barrier, limits, breaker, retry), ``dedup`` (flights, response cache, stream
tee), ``context_cache``, ``limits``, ``breaker``, ``retry``, ``accounting``,
``apierrors``, ``tokens``, ``metrics``, ``connections`` (the connection cap),
``keys`` (keeping provider keys in this process), ``logthrottle``; ``dialects/`` (one
per wire API: paths, header rules, errors, usage, SSE events) and ``sse`` (the one
SSE parser).

The names below load on first use: an agent that only mints task tokens
(``coordinator.gateway.tokens``) must not pay for aiohttp and prometheus-client.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {"Gateway": "server", "GatewayHandle": "server", "serve_forever": "server", "start_in_thread": "server",
          "TokenClaims": "tokens", "new_fleet_token": "tokens", "read_token": "tokens", "task_token": "tokens"}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
