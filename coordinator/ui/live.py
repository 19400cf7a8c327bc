"""The display loops of ``coordinator run`` (a rich Live view on a TTY, plain lines otherwise) and
``status --watch`` (redrawn on a TTY; snapshots or JSON lines into a pipe)."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.live import Live

from ..clock import poll
from ..config import FleetConfig
from ..errors import StoreUnavailableError
from ..gateway.client import read_gateway
from ..report.events import RecentEvents, agent_notices, since, task_outcomes
from ..report.rows import needs_attention, snapshot
from ..report.status import build_status
from ..store import open_store
from .dashboard import notice_line, outcome_line, plain_line, render_dashboard, summary_table
from .tables import PIPE_WIDTH, make_console, render_status

PLAIN_EVERY_S = 2.0
LIVE_EVERY_S = 0.5
STOP_HINT = "watching tasks/ for new files; Ctrl-C to stop"


class FleetDisplay:
    """Rebuilds the status at most every half second and shows it; the summary shows this run's figures."""

    def __init__(self, config: FleetConfig, console: Console | None = None, *, live: bool,
                 watching: bool = False) -> None:
        self.config = config
        self.console = console or make_console()
        self.store = open_store(config)
        self.started = time.monotonic()
        self.live = Live(console=self.console, refresh_per_second=4, transient=False) if live else None
        self.hint = STOP_HINT if watching else None
        self.events = RecentEvents(self.store)
        self.baseline = build_status(config, time.time(), store=self.store)  # lifetime totals so far
        self.shown_at = float("-inf")
        self.last_line = ""

    def __enter__(self) -> FleetDisplay:
        if self.live is not None:
            self.live.__enter__()
        elif self.hint is not None:
            self._print(self.hint)
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
        try:
            snap = snapshot(self.config, self.store)
            status = build_status(self.config, time.time(), snap=snap, store=self.store)
            events = self.events.refresh()
        except StoreUnavailableError as exc:  # agents wait it out; so does the view
            self._show_line(f"[{self.elapsed():6.1f}s] {exc}; agents are waiting for it")
            return
        if self.live is not None:
            self.live.update(render_dashboard(status, events, self.elapsed(), self._tokens(status), hint=self.hint))
            return
        for notice in agent_notices(self.events.fresh):
            self._print(notice_line(notice, self.elapsed()))
        for outcome in task_outcomes(self.events.fresh, snap.taskset, snap.records):
            self._print(outcome_line(outcome, self.elapsed()))
        # The queue's progress is absolute; the gateway's figures are this run's.
        self._show_line(plain_line({**status, "gateway": since(self.baseline, status)["gateway"]}, self.elapsed()))

    def _show_line(self, line: str) -> None:
        """A progress line, when it says something new (the time in brackets aside)."""
        if line.split("] ", 1)[1] == self.last_line.split("] ", 1)[-1]:
            return
        self.last_line = line
        if self.live is not None:
            self.live.update(line)
        else:
            self._print(line)

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

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
        """Print the last progress lines (plain mode) and this run's summary; returns the final status."""
        if self.live is None:
            self.update(force=True)
        try:
            snap = snapshot(self.config, self.store)
        except StoreUnavailableError as exc:
            self._print(f"no summary: {exc}")
            return build_status(self.config, time.time())  # the outage report
        status = build_status(self.config, time.time(), snap=snap, store=self.store)
        self.console.print(summary_table(since(self.baseline, status), self.elapsed(), needs_attention(snap.rows)))
        return status


def watch_status(build: Callable[[], dict[str, Any]], every_s: float, *, as_json: bool = False,
                 out: TextIO | None = None, timeout_s: float | None = None) -> None:
    """``status --watch``: redraw on a terminal; into a pipe, a snapshot (or a JSON line) every ``every_s``.

    A reader that goes away (``| head``) ends the watch quietly.
    """
    out = out or sys.stdout
    if out.isatty() and not as_json:
        with Live(render_status(build()), refresh_per_second=2, console=Console(file=out)) as live:
            for _ in poll(every_s, timeout_s=timeout_s):
                live.update(render_status(build()))
        return
    try:
        for _ in poll(every_s, timeout_s=timeout_s):
            report = build()
            out.write(json.dumps(report, default=str) + "\n" if as_json else snapshot_text(report) + "\n")
            out.flush()
    except BrokenPipeError:
        _silence(out)


def snapshot_text(report: dict[str, Any]) -> str:
    """One status snapshot as plain text, headed by the time it was taken."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=PIPE_WIDTH, color_system=None)
    parts: list[RenderableType] = [f"-- {time.strftime('%H:%M:%S')}", render_status(report)]
    for part in parts:
        console.print(part, markup=False, highlight=False, soft_wrap=isinstance(part, str))
    return buffer.getvalue().rstrip("\n")


def _silence(out: TextIO) -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail on the closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass
