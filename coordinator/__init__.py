"""coordinator: run a fleet of LLM agents over a queue of TOML tasks, through one shared gateway.

The public API is the names in ``__all__``; they are resolved lazily so that
``import coordinator`` (which every CLI start-up does) costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FleetConfig": "config", "load_config": "config",
    "Task": "tasks", "TaskSet": "tasks", "load_tasks": "tasks",
    "Store": "store", "FileStore": "store", "Claim": "store", "Record": "store",
    "ClaimBook": "claims", "Holder": "claims",
    "Agent": "agent",
    "Gateway": "gateway.server", "start_in_thread": "gateway.server",
    "build_status": "status",
    "CoordinatorError": "errors", "ConfigError": "errors", "TaskError": "errors", "ClaimLostError": "errors",
    "BudgetError": "errors", "BackendError": "errors",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
