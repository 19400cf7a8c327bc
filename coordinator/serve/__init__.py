"""Surfaces over ``queue/`` and ``report/`` (DESIGN §9): the HTTP task API with its SSE streams.

``mount_task_api(app, config, authenticate, check_budget)`` is the one call the
gateway makes: the API shares the gateway's server, port and tokens (docs/api.md).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..config import FleetConfig
from .access import Authenticate
from .api import TaskApi

__all__ = ["TaskApi", "mount_task_api"]


def mount_task_api(app: web.Application, config: FleetConfig, authenticate: Authenticate,
                   check_budget: Callable[[], None]) -> TaskApi:
    """Serve the task API under ``/v1/coordinator/`` on ``app``; returns it (tests read its tailer)."""
    api = TaskApi(config, check_budget)
    api.mount(app, authenticate)
    return api
