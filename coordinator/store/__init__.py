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
    """The store a fleet's config names: today the file store under ``[fleet] state_dir``."""
    from .file import FileStore  # noqa: PLC0415  (filelock only where a store is opened)

    return FileStore(config.state_dir)
