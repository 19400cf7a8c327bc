"""Where fleet state lives: the contract (``base``), one-host operations (``locked``), and the stores.

``open_store(config)`` is the only constructor the rest of the code uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Claim, Holder, Record, Store

if TYPE_CHECKING:
    from ..config import FleetConfig

__all__ = ["Claim", "Holder", "Record", "Store", "open_store"]


def open_store(config: FleetConfig) -> Store:
    """The store ``[fleet] state`` names: the file store under ``state_dir``, or Redis (DESIGN §13)."""
    if config.fleet.state == "file":
        from .file import FileStore  # noqa: PLC0415  (filelock only where a store is opened)

        return FileStore(config.state_dir)
    from .redis_setup import INCARNATION_FILE, connect  # noqa: PLC0415  (redis-py is an optional extra)

    return connect(config.fleet.state, password=config.state_password,
                   fleet=config.fleet.state_name or config.root.resolve().name,
                   marker=config.state_dir / INCARNATION_FILE)
