"""What ``coordinator run`` shows: a live rich view on a TTY, plain lines otherwise, a summary at the end.

Every view is a pure function of a status dict (``report.status.build_status``) plus
recent events, so tests render them into a fixed-width Console and compare text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..report.events import SHOWN_EVENTS, TaskOutcome
from ..tasks.model import FINISHED
from .tables import agents_table, gateway_line, merge_queue_line, queue_line


def progress(counts: dict[str, int]) -> tuple[int, int]:
    """(finished, total) over valid tasks."""
    total = sum(v for k, v in counts.items() if k != "invalid")
    return sum(counts.get(state, 0) for state in FINISHED), total


def event_line(event: dict[str, Any]) -> str:
    """One event as ``12:00:01 done t1 agent-2``."""
    clock = datetime.fromtimestamp(event.get("ts", 0)).strftime("%H:%M:%S")
    who = event.get("agent") or ""
    detail = event.get("reason") or event.get("error") or ""
    line = f"{clock} {event.get('event', '?'):<9} {event.get('task', '') or ''} {who}"
    return f"{line} — {detail}" if detail else line


def render_dashboard(status: dict[str, Any], events: list[dict[str, Any]], elapsed_s: float,
                     tokens: dict[str, int] | None = None, *, hint: str | None = None) -> RenderableType:
    """The live view: progress, queue counts, agents, gateway, merge queue, recent events; ``hint`` under the frame."""
    done, total = progress(status["tasks"])
    header = Text(f"coordinator  {done}/{total} finished  running {status['tasks']['running']}  "
                  f"{elapsed_s:.1f}s", style="bold")
    recent = [e for e in events if e.get("event") in SHOWN_EVENTS][-8:]
    event_text = Text("\n".join(event_line(e) for e in recent) or "(no events yet)", style="dim")
    bar = Table.grid()  # a bare ProgressBar ends without a newline: the next line would be glued to it
    bar.add_row(ProgressBar(total=max(total, 1), completed=done, width=60))
    merge = [Text(""), merge_queue_line(status["merge_queue"])] if "merge_queue" in status else []
    body = Group(header, bar, queue_line(status["tasks"]),
                 Text(""), agents_table(status["agents"], tokens), Text(""), gateway_line(status["gateway"]),
                 *merge, Text(""), Text("recent events", style="bold"), event_text)
    return Panel(body, title="fleet", expand=True, subtitle=hint)


def plain_line(status: dict[str, Any], elapsed_s: float) -> str:
    """One progress line for logs and pipes (no TTY)."""
    counts, gateway = status["tasks"], status["gateway"]
    done, total = progress(counts)
    return (f"[{elapsed_s:7.1f}s] {done}/{total} finished: done {counts['done']} failed {counts['failed']} "
            f"cancelled {counts['cancelled']} running {counts['running']} pending {counts['pending']} "
            f"blocked {counts['blocked']} invalid {counts['invalid']} | requests {gateway['requests']} "
            f"upstream {gateway['upstream_calls']} saved ${gateway['usd_saved']:.4f}")


def outcome_line(outcome: TaskOutcome, elapsed_s: float) -> str:
    """One finished attempt: ``[    3.2s] t1 done (attempt 1/3, $0.0012)``, with the error when it failed."""
    attempts = f"{outcome.attempt}/{outcome.max_attempts}" if outcome.max_attempts else str(outcome.attempt)
    line = f"[{elapsed_s:7.1f}s] {outcome.task} {outcome.state} (attempt {attempts}, ${outcome.usd:.4f})"
    return f"{line} — {outcome.error}" if outcome.error else line


def notice_line(event: dict[str, Any], elapsed_s: float) -> str:
    """An agent crash, hang or restart, from its event."""
    agent, pid = event.get("agent", "?"), event.get("pid", "?")
    if event["event"] == "agent_exited":
        what = f"exited with code {event.get('code')}; restarting in {event.get('restart_in_s', 0)}s"
    elif event["event"] == "agent_hung":
        what = f"hung (no heartbeat for {event.get('heartbeat_age_s', '?')}s); killed"
    else:
        what = f"restarted (restart {event.get('restarts', 0)})"
    return f"[{elapsed_s:7.1f}s] agent {agent} (pid {pid}) {what}"


MAX_NAMED = 20  # tasks named per state in the summary; the rest are counted


def summary_table(status: dict[str, Any], elapsed_s: float,
                  attention: dict[str, list[dict[str, Any]]] | None = None) -> RenderableType:
    """The end-of-run summary: counts, gateway savings, and what needs attention.

    ``status`` holds this run's figures (``report.events.since``); ``attention``
    names the failed and blocked tasks (``report.rows.needs_attention``).
    """
    counts, gateway = status["tasks"], status["gateway"]
    table = Table(title=f"fleet summary ({elapsed_s:.1f}s)", show_header=False, box=None, pad_edge=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for state in ("done", "failed", "blocked", "invalid", "cancelled", "pending", "running"):
        if counts.get(state) or state == "done":
            table.add_row(state, str(counts[state]))
    # Collapsed is what dedup saved; upstream calls may exceed requests (retries), so no subtraction.
    collapsed = gateway["dedup_joined"] + gateway["dedup_hits"]
    table.add_row("requests", f"{gateway['requests']} ({gateway['upstream_calls']} upstream, {collapsed} "
                              f"collapsed: {gateway['dedup_joined']} joined, {gateway['dedup_hits']} cache hits)")
    table.add_row("tokens", f"{gateway['input_tokens']} in, {gateway['output_tokens']} out, "
                            f"{gateway['cache_read_tokens']} cache read, {gateway['cache_write_tokens']} cache write")
    table.add_row("cost", f"${gateway['usd']:.4f} (saved ${gateway['usd_saved']:.4f})")
    parts: list[RenderableType] = [table]
    for state in ("failed", "blocked"):
        named = (attention or {}).get(state, [])
        for item in named[:MAX_NAMED]:
            reason = f" — {item['reason']}" if item.get("reason") else ""
            parts.append(Text(f"{state}: {item['id']}{reason}", style="red" if state == "failed" else "yellow"))
        if len(named) > MAX_NAMED:
            parts.append(Text(f"{state}: … {len(named) - MAX_NAMED} more (`coordinator tasks --state {state}`)"))
    for bad in status["invalid_files"]:
        parts.append(Text(f"invalid: {bad['error']}", style="red"))
    return Group(*parts)
