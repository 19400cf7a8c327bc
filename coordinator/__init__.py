"""coordinator: run a fleet of LLM agents over a queue of TOML tasks, through one shared gateway.

The public API is the extension points in ``__all__``: a backend (``Backend``), a
runner (``Runner``, with ``RunContext`` and ``RunResult``), a store (``Store``,
``open_store``, ``Claim``, ``Record``), the task model (``Task``, ``State``), the
task operations (``add_task``, ``retry_task``, ``cancel_task``), the config, and the
errors. Names resolve lazily, so ``import coordinator`` (which every CLI start-up
does) costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FleetConfig": "config", "load_config": "config",
    "Task": "tasks", "State": "tasks", "TaskSet": "tasks", "load_tasks": "tasks",
    "Store": "store", "open_store": "store", "Claim": "store", "Record": "store",
    "add_task": "queue.ops", "retry_task": "queue.ops", "cancel_task": "queue.ops",
    "Backend": "backends.base",
    "Runner": "runners", "RunContext": "runners", "RunResult": "runners",
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
