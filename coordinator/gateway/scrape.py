"""The fleet beside the gateway on ``/metrics``: tasks by state, agents, the merge queue.

Read from the store the way ``status`` reads it (``report.status.fleet_figures``),
on a worker thread so the event loop never waits on files or Redis, and at most
every ``MAX_AGE_S``, so a tight scrape interval costs one read per window.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..config import FleetConfig
from .metrics import FleetGauges

log = logging.getLogger("coordinator.gateway")

MAX_AGE_S = 2.0


class FleetFigures:
    """Keeps ``FleetGauges`` current enough for a scrape."""

    def __init__(self, config: FleetConfig, gauges: FleetGauges) -> None:
        self.config = config
        self.gauges = gauges
        self._read_at = float("-inf")
        self._store = None

    async def refresh(self) -> None:
        """Read the figures again if the last read is older than ``MAX_AGE_S``."""
        if time.monotonic() - self._read_at < MAX_AGE_S:
            return
        self._read_at = time.monotonic()
        try:
            figures = await asyncio.to_thread(self._read)
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even when the store cannot be read
            log.warning("gateway: could not read the fleet's figures for /metrics: %s", exc)
            return
        self.gauges.set(figures)

    def _read(self) -> dict:
        from ..report.status import fleet_figures  # noqa: PLC0415 - report/ reads task files: load it on first scrape
        from ..store import open_store  # noqa: PLC0415

        if self._store is None:
            self._store = open_store(self.config)
        return fleet_figures(self.config, time.time(), self._store)
