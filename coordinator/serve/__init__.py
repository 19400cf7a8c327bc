"""Surfaces over ``queue/`` and ``report/`` (DESIGN §9): the HTTP task API with its SSE streams, and the web dashboard.

``mount_task_api(app, config, authenticate, check_budget)`` is the one call the
gateway makes: the API (docs/api.md) and the dashboard at ``/ui/``
(docs/dashboard.md) share the gateway's server, port and tokens.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..clock import REAL_CLOCK, Clock
from ..config import FleetConfig
from .access import Authenticate
from .api import TaskApi
from .web import mount_dashboard

__all__ = ["TaskApi", "mount_task_api"]


def mount_task_api(app: web.Application, config: FleetConfig, authenticate: Authenticate,
                   check_budget: Callable[[], None], clock: Clock = REAL_CLOCK) -> TaskApi:
    """Serve the task API under ``/v1/coordinator/`` and the dashboard under ``/ui/``; returns the API."""
    api = TaskApi(config, check_budget, clock)
    api.mount(app, authenticate)
    mount_dashboard(app, api)
    return api
