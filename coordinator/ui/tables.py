"""Rendering of the reports ``report/`` builds: task lists, task details, the status report.

Every function here takes plain data (rows, dicts) and draws it; none reads the
store, the task files or the clock.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..report.rows import STATES, TaskRow

STATE_STYLES = {"pending": "white", "blocked": "yellow", "running": "cyan", "done": "green",
                "failed": "red", "invalid": "red", "cancelled": "dim"}


PIPE_WIDTH = 1000  # piped output is for logs and grep: never wrapped at a terminal's 80 columns


def make_console(out: TextIO | None = None) -> Console:
    """A console for ``out`` (stdout): the terminal's width on a TTY, unwrapped lines into a pipe."""
    out = out or sys.stdout
    return Console(file=out) if out.isatty() else Console(file=out, width=PIPE_WIDTH)


ANSI = {"white": "", "yellow": "\x1b[33m", "cyan": "\x1b[36m", "green": "\x1b[32m", "red": "\x1b[31m",
        "dim": "\x1b[2m"}


def task_table(rows: list[TaskRow], out: TextIO | None = None, *, color: bool | None = None) -> None:
    """Tasks as aligned columns, one line each, in priority order (invalid files last).

    AGENT is what the task runs on (its ``[agents.NAME]``); WORKER is the agent
    process that ran it last. Plain formatted lines rather than a rich Table: rich
    lays out every cell of every row, which takes seconds for 10,000 tasks; this
    takes milliseconds.
    """
    out = out or sys.stdout
    color = out.isatty() if color is None else color
    header = ("ID", "STATE", "PRI", "TRIES", "AGENT", "WORKER", "TITLE / REASON")
    cells = [(r.id, r.state, "-" if r.priority is None else str(r.priority),
              f"{r.attempts}/{r.max_attempts}" if r.max_attempts else "-", r.agent or "-", r.worker or "-",
              r.title if not r.reason else (f"{r.title} — {r.reason}" if r.title else r.reason)) for r in rows]
    columns = len(header) - 1
    widths = [max([len(header[i])] + [len(c[i]) for c in cells]) for i in range(columns)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[-1]]
    for cell in cells:
        state = cell[1].ljust(widths[1])
        if color:
            state = f"{ANSI[STATE_STYLES.get(cell[1], 'white')]}{state}\x1b[0m"
        lines.append("  ".join([cell[0].ljust(widths[0]), state, *(c.ljust(w) for c, w in
                                                                    zip(cell[2:columns], widths[2:columns]))])
                     + "  " + cell[-1])
    if not rows:
        lines.append("no tasks")
    out.write("\n".join(lines) + "\n")


def task_detail(data: dict[str, Any], console: Console | None = None) -> None:
    """A readable view of ``report.rows.task_detail``."""
    console = console or make_console()
    task, record = data["task"], data["record"] or {}
    style = STATE_STYLES.get(data["state"], "white")
    if data["state"] == "invalid":
        _invalid_detail(data, console)
        return
    console.print(f"[bold]{escape(task['id'])}[/]  [{style}]{data['state']}[/]  priority {task['priority']}  "
                  f"attempts {record.get('attempts', 0)}/{task['max_attempts']}")
    # Everything below holds user text (file names, error output, agent ids): never parse it as markup.
    lines = [f"source: {task.get('source', '-')}"]
    if data["reason"]:
        lines.append(f"reason: {data['reason']}")
    if task.get("depends_on"):
        lines.append(f"depends on: {', '.join(task['depends_on'])}")
    if data["claim"]:
        claim = data["claim"]
        lines.append(f"claimed by {claim['agent']} (pid {claim['pid']}), epoch {claim['epoch']}")
    lines += [history_line(entry) for entry in record.get("history", [])]
    if record.get("usage"):
        lines.append(f"usage: {usage_text(record['usage'])}")
    for alias, row in (data.get("routing") or {}).items():
        lines.append(f"routed to {alias}: {usage_text(row)}")
    if record.get("branch"):  # workspaces
        lines.append(f"branch {record['branch']}  base {str(record.get('base'))[:12]}  "
                     f"tip {str(record.get('tip'))[:12]}  landed {str(record.get('landed') or '-')[:12]}  "
                     f"conflicts {record.get('conflicts', 0)}")
    lines += [f"runs: {data['runs_dir']}", "prompt:"]
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(task["prompt"], markup=False, highlight=False)
    ran = data.get("last_run_prompt")
    if ran:  # the task file changed after its last run: say what that run really used
        console.print(f"prompt as run {ran['run']} used it (the task file has changed since):", markup=False)
        console.print(ran["prompt"], markup=False, highlight=False)


def _invalid_detail(data: dict[str, Any], console: Console) -> None:
    console.print(f"[bold]{escape(data['task']['id'] or '-')}[/]  [red]invalid[/]")
    console.print(f"source: {data['task']['source']}", markup=False, highlight=False, soft_wrap=True)
    for problem in data.get("problems") or [data["reason"]]:
        console.print(f"problem: {problem}", markup=False, highlight=False, soft_wrap=True)
    console.print("fix the file; `coordinator validate` checks it", markup=False, highlight=False)


def history_line(entry: dict[str, Any]) -> str:
    """``  attempt 2 (run 5): failed by agent-1 at 2026-05-01 12:00:03 (4.2s) — error``; run N is ``logs --run N``."""
    finished, started = entry.get("finished_at"), entry.get("started_at")
    when = f" at {datetime.fromtimestamp(finished).strftime('%Y-%m-%d %H:%M:%S')}" if finished else ""
    took = f" ({finished - started:.1f}s)" if finished and started else ""
    error = f" — {entry['error']}" if entry.get("error") else ""
    run = f" (run {entry['epoch']})" if entry.get("epoch") else ""
    return f"  attempt {entry.get('attempt', '?')}{run}: {entry.get('outcome', '?')} by {entry.get('agent', '?')}" \
           f"{when}{took}{error}"


def usage_text(usage: dict[str, Any]) -> str:
    """``1,234 in / 567 out tokens, cache 890 read / 111 written, $0.0123 (saved $0.0456), 3 requests``."""
    def count(key: str) -> str:
        return f"{int(usage.get(key, 0) or 0):,}"

    text = f"{count('input_tokens')} in / {count('output_tokens')} out tokens"
    if usage.get("cache_read_tokens") or usage.get("cache_write_tokens") or usage.get("cache_read_input_tokens"):
        read = usage.get("cache_read_tokens", usage.get("cache_read_input_tokens", 0))
        written = usage.get("cache_write_tokens", usage.get("cache_creation_input_tokens", 0))
        text += f", cache {int(read or 0):,} read / {int(written or 0):,} written"
    if "usd" in usage:
        text += f", ${float(usage['usd'] or 0):.4f}"
        if usage.get("usd_saved"):
            text += f" (saved ${float(usage['usd_saved']):.4f})"
    if usage.get("requests"):
        text += f", {count('requests')} request(s)"
    return text


def render_status(status: dict[str, Any]) -> RenderableType:
    """The status report as rich renderables (queue, agents, gateway, problems)."""
    if status.get("store", {}).get("reachable") is False:  # nothing of the queue can be read: say only that
        return Group(gateway_line(status["gateway"]), Text("unhealthy: " + "; ".join(status["problems"]),
                                                           style="bold red"))
    parts: list[RenderableType] = [queue_line(status["tasks"]), agents_table(status["agents"]),
                                   gateway_line(status["gateway"])]
    if "merge_queue" in status:
        parts.append(merge_queue_line(status["merge_queue"]))
    for claim in status["stale_claims"]:
        parts.append(Text(f"stale claim: {claim['task']} held by {claim['agent']} (pid {claim['pid']}, "
                          f"{claim['reason']}, {claim['age_s']}s)", style="yellow"))
    for bad in status["invalid_files"]:
        parts.append(Text(f"invalid: {bad['error']}", style="red"))
    if status.get("paused"):
        parts.append(Text("paused: agents claim no new task (`coordinator resume` to continue)", style="yellow"))
    health = "healthy" if status["healthy"] else "unhealthy: " + "; ".join(status["problems"])
    parts.append(Text(health, style="green" if status["healthy"] else "bold red"))
    return Group(*parts)


def merge_queue_line(queue: dict[str, Any]) -> Text:
    """``merge queue  waiting 1  gating t3  landed 12  conflicts 2  last t9 (abc1234)``, and why it is held."""
    text = Text(f"merge queue  waiting {queue['waiting']}  gating {queue['gating'] or '-'}  landed {queue['landed']}"
                f"  conflicts {queue['conflicts']}")
    last = queue.get("last_landed")
    if last:
        text.append(f"  last {last['task']} ({str(last['commit'])[:7]})")
    if queue.get("held"):
        text.append(f"\nheld: {queue['held']['task']}: {queue['held']['reason']}", style="yellow")
    return text


def queue_line(counts: dict[str, int]) -> Text:
    """``pending 3  running 2  done 10 ...`` with each state coloured."""
    text = Text("tasks  ")
    for state in STATES:
        text.append(f"{state} {counts.get(state, 0)}  ", style=STATE_STYLES.get(state, "white"))
    return text


def agents_table(agents: list[dict[str, Any]], tokens: dict[str, int] | None = None) -> Table:
    """One row per agent: state, task, elapsed, heartbeat age, tokens, done/failed."""
    table = Table(box=None, pad_edge=False, show_edge=False)
    for name in ("AGENT", "PID", "STATE", "TASK", "ELAPSED", "BEAT", "TOKENS", "DONE", "FAILED"):
        table.add_column(name, no_wrap=True)
    for agent in agents:
        elapsed = agent.get("task_elapsed_s")
        used = (tokens or {}).get(agent["task"] or "", 0)
        style = {"dead": "red", "running": "cyan"}.get(agent["state"], "white")
        table.add_row(escape(str(agent["id"])), str(agent["pid"]), f"[{style}]{agent['state']}[/]",
                      escape(agent["task"] or "-"), f"{elapsed:.0f}s" if elapsed is not None else "-",
                      f"{agent['heartbeat_age_s']:.1f}s", str(used) if used else "-",
                      str(agent["done"]), str(agent["failed"]))
    if not agents:
        table.add_row("(no agents)", "", "", "", "", "", "", "", "")
    return table


def gateway_line(gateway: dict[str, Any]) -> Text:
    """Requests, upstream calls, dedup and cache figures, USD and USD saved; requests per alias; config refusals."""
    where = gateway["url"] if gateway["running"] else ("unreachable" if gateway.get("unreachable") else "stopped")
    text = Text(f"gateway {where}  requests {gateway['requests']}  upstream {gateway['upstream_calls']}  "
                f"joined {gateway['dedup_joined']}  hits {gateway['dedup_hits']}  "
                f"cache read {gateway['cache_read_tokens']} / write {gateway['cache_write_tokens']} tok  "
                f"${gateway['usd']:.4f} (saved ${gateway['usd_saved']:.4f})")
    aliases = gateway.get("aliases") or {}
    if len(aliases) > 1 or set(aliases) - {"default"}:  # routing is in use: where requests went
        text.append("\nrouted  " + "  ".join(f"{alias} {row['requests']} req ${float(row['usd']):.4f}"
                                             for alias, row in aliases.items()))
    config = gateway.get("config") or {}
    if config.get("refused"):
        text.append(f"\nfleet.toml refused (still serving generation {config['generation']}): "
                    f"{config['refused']['error']}", style="bold red")
    return text


def print_status(status: dict[str, Any], console: Console | None = None) -> None:
    """Print the rendered report."""
    (console or make_console()).print(render_status(status))
