"""``gateway-stats.json``: the ledger saved about once a second when it changed, and at stop; loaded at start.

So fleet totals and budgets survive a restart, and ``coordinator status`` and
``show`` read the last figures when no gateway is running.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from ..atomic import PRIVATE_FILE, write_json_atomic
from .accounting import Ledger

log = logging.getLogger("coordinator.gateway")

SAVE_EVERY_S = 1.0


class StatsFile:
    """One gateway's saved ledger."""

    def __init__(self, ledger: Ledger, path: Path) -> None:
        self.ledger = ledger
        self.path = path
        self._saved_version = -1

    def save(self, *, force: bool = False) -> None:
        """Write the file when the totals changed since the last write."""
        version = self.ledger.version
        if not force and version == self._saved_version:
            return
        write_json_atomic(self.path, self.ledger.snapshot(), mode=PRIVATE_FILE, indent=1)
        self._saved_version = version

    def load(self) -> None:
        """Restore the totals a previous gateway saved (an unreadable file: they start from zero)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("gateway: ignoring unreadable %s (%s); totals start from zero", self.path, exc)
            return
        if isinstance(data, dict):
            self.ledger.load(data)
            self._saved_version = self.ledger.version

    async def save_forever(self) -> None:
        """Save every ``SAVE_EVERY_S`` while the gateway runs."""
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            try:
                self.save()
            except OSError as exc:
                log.warning("gateway: could not save %s: %s", self.path, exc)
