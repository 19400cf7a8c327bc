"""The display loop of ``coordinator run``: a rich Live view on a TTY, plain lines otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live

from ..clock import poll
from ..config import FleetConfig
from ..gateway.client import read_gateway
from ..report.events import RecentEvents
from ..report.status import build_status
from ..store import open_store
from .dashboard import plain_line, render_dashboard, summary_table
from .tables import render_status

PLAIN_EVERY_S = 2.0
LIVE_EVERY_S = 0.5


class FleetDisplay:
    """Rebuilds the status at most every half second and shows it."""

    def __init__(self, config: FleetConfig, console: Console | None = None, *, live: bool) -> None:
        self.config = config
        self.console = console or Console()
        self.store = open_store(config)
        self.started = time.monotonic()
        self.live = Live(console=console, refresh_per_second=4, transient=False) if live else None
        self.events = RecentEvents(self.store)
        self.shown_at = float("-inf")
        self.last_line = ""

    def __enter__(self) -> FleetDisplay:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, *, force: bool = False) -> None:
        """Refresh the view if it is due."""
        every = LIVE_EVERY_S if self.live is not None else PLAIN_EVERY_S
        if not force and time.monotonic() - self.shown_at < every:
            return
        self.shown_at = time.monotonic()
        status = build_status(self.config, time.time(), store=self.store)
        events = self.events.refresh()
        if self.live is not None:
            self.live.update(render_dashboard(status, events, self.elapsed(), self._tokens(status)))
            return
        line = plain_line(status, self.elapsed())
        if line.split("] ", 1)[1] != self.last_line.split("] ", 1)[-1]:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
            self.last_line = line

    def elapsed(self) -> float:
        """Seconds since the fleet started."""
        return time.monotonic() - self.started

    def _tokens(self, status: dict[str, Any]) -> dict[str, int]:
        info = read_gateway(self.config)
        out: dict[str, int] = {}
        for agent in status["agents"]:
            task = agent.get("task")
            usage = info.task_usage(task) if info and task else None
            if usage:
                out[task] = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
        return out

    def finish(self) -> dict[str, Any]:
        """Print the last progress line (plain mode) and the summary table; returns the final status."""
        if self.live is None:
            self.update(force=True)
        status = build_status(self.config, time.time(), store=self.store)
        self.console.print(summary_table(status, self.elapsed()))
        return status


def watch_status(build: Callable[[], dict[str, Any]], every_s: float) -> None:
    """``status --watch``: redraw the status report every ``every_s`` until interrupted."""
    with Live(render_status(build()), refresh_per_second=2) as live:
        for _ in poll(every_s):
            live.update(render_status(build()))
