"""The shared inference gateway: one local server that collapses redundant context across the fleet.

Modules, one concept each: ``server`` (lifecycle, endpoints), ``proxy`` (the request
path: auth, routing, admission, dedup), ``pipeline`` (the upstream half: warm-up
barrier, limits, breaker, retry), ``dedup`` (flights, response cache, stream tee),
``context_cache``, ``limits``, ``breaker``, ``retry``, ``accounting``, ``sse``,
``apierrors``, ``tokens``, ``metrics``, ``clock``. Nothing here is imported by
``coordinator`` at start-up; import what you use.
"""

from __future__ import annotations

from .server import Gateway, GatewayHandle, serve_forever, start_in_thread
from .tokens import TokenClaims, new_fleet_token, read_token, task_token

__all__ = ["Gateway", "GatewayHandle", "TokenClaims", "new_fleet_token", "read_token", "serve_forever",
           "start_in_thread", "task_token"]
