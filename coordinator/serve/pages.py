"""The web dashboard's HTML: each view rendered from ``report/`` data, every value escaped.

``fill`` is the one way text reaches a page: it ``html.escape``s every value
except ``Html`` (markup this module built), so a prompt, a title or a file name
holding ``<script>`` shows as text. Pages carry no inline script or style (the
server's Content-Security-Policy forbids both); ``static/dashboard.js`` finds
what it needs in ``data-`` attributes. A view is two parts: the live part
(``<div id="live">``), which the script fetches again and swaps as the fleet
changes, and what stays put around it (the filter form, the log).
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlencode

from ..report.rows import STATES, TaskRow
from ..tasks import State
from ..tasks.model import can

API = "/v1/coordinator"
MAX_ROWS = 500  # rows a task list shows; filters narrow the rest
GATEWAY_FIGURES = (  # (status --json key, label), in the order shown
    ("requests", "requests"), ("upstream_calls", "upstream calls"), ("dedup_joined", "joined an identical flight"),
    ("dedup_hits", "served from the response cache"), ("cache_read_tokens", "prompt-cache read tokens"),
    ("cache_write_tokens", "prompt-cache write tokens"), ("input_tokens", "input tokens"),
    ("output_tokens", "output tokens"))


class Html(str):
    """Markup that is safe as it is: ``fill`` inserts it unescaped."""


EMPTY = Html("")


def esc(value: Any) -> Html:
    """``value`` as text in HTML (None is empty)."""
    if isinstance(value, Html):
        return value
    return Html("" if value is None else html.escape(str(value), quote=True))


def fill(template: str, **values: Any) -> Html:
    """``template`` with each ``{name}`` replaced by its value, escaped unless it is ``Html``."""
    return Html(template.format(**{name: esc(value) for name, value in values.items()}))


def join(parts: Iterable[Any]) -> Html:
    """The parts one after another, each escaped unless it is ``Html``."""
    return Html("".join(esc(part) for part in parts))


def task_href(task_id: str) -> str:
    """The dashboard URL of one task."""
    return f"/ui/tasks/{quote(task_id, safe='')}"


def layout(title: str, view: str, live: Html, *, before: Html = EMPTY, after: Html = EMPTY,
           root: str = "") -> str:
    """A whole page: the header, what stays put before and after the live part, and the live part."""
    return fill(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>{title} · coordinator</title><link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/ui/static/dashboard.css">'
        '<script src="/ui/static/dashboard.js" defer></script></head>'
        '<body data-view="{view}" data-fleet-events="{events}">'
        '<header class="top"><a class="brand" href="/ui/">coordinator</a><nav>'
        '<a href="/ui/"{overview}>Overview</a><a href="/ui/tasks"{tasks}>Tasks</a></nav>'
        '<span class="root" title="fleet root">{root}</span>'
        '<span id="conn" class="conn" role="status">connecting…</span></header>'
        '<main><p id="notice" class="notice" role="alert" hidden></p>{before}'
        '<div id="live">{live}</div>{after}</main></body></html>\n',
        title=title, view=view, events=f"{API}/events", root=root, before=before, live=live,
        after=after, overview=Html(' aria-current="page"' if view == "overview" else ""),
        tasks=Html(' aria-current="page"' if view in ("tasks", "task") else ""))


def state_badge(state: str, element_id: str = "") -> Html:
    """A task state as a coloured label."""
    ident = fill(' id="{id}"', id=element_id) if element_id else EMPTY
    return fill('<span class="badge state-{state}"{ident}>{state}</span>', state=state, ident=ident)


def overview(report: dict[str, Any]) -> Html:
    """The overview: health, queue counts, agents, gateway savings and the merge queue."""
    return join([_health(report), _queue(report["tasks"]), _agents(report["agents"]), _gateway(report["gateway"]),
                 _merge_queue(report.get("merge_queue"))])


def overview_events() -> Html:
    """The recent-events list the script fills from the fleet stream."""
    return Html('<section class="card"><h2>Recent events</h2><ol id="events" class="events">'
                '<li class="muted">Events show here as they happen.</li></ol></section>')


def _health(report: dict[str, Any]) -> Html:
    parts = []
    if report.get("paused"):
        parts.append(Html('<p class="banner warn">Paused: agents claim nothing new '
                          '(<code>coordinator resume</code> resumes).</p>'))
    if report.get("problems"):
        items = join(fill("<li>{p}</li>", p=p) for p in report["problems"])
        parts.append(fill('<div class="banner bad"><strong>Needs attention</strong><ul>{items}</ul></div>',
                          items=items))
    return join(parts)


def _queue(counts: dict[str, int]) -> Html:
    items = join(fill('<li><a class="count state-{state}" href="/ui/tasks?state={state}"><span class="n">{n}</span>'
                      ' {state}</a></li>', state=state, n=counts.get(state, 0)) for state in STATES)
    total = sum(counts.get(state, 0) for state in STATES)
    return fill('<section class="card"><h2>Queue <span class="muted">{total}</span></h2>'
                '<ul class="counts">{items}</ul></section>', total=f"{total} task{'' if total == 1 else 's'}",
                items=items)


def _agents(agents: list[dict[str, Any]]) -> Html:
    if not agents:
        body = Html('<p class="muted">No agents. <code>coordinator run</code> starts a fleet.</p>')
    else:
        rows = join(fill('<tr><td>{id}</td><td>{state}</td><td>{task}</td><td class="num">{elapsed}</td>'
                         '<td class="num">{done}</td><td class="num">{failed}</td></tr>',
                         id=a["id"], state=a["state"], task=_task_link(a.get("task")),
                         elapsed=_seconds(a.get("task_elapsed_s")), done=a.get("done", 0),
                         failed=a.get("failed", 0)) for a in agents)
        body = fill('<div class="scroll"><table><thead><tr><th>agent</th><th>state</th><th>task</th>'
                    '<th class="num">for</th><th class="num">done</th><th class="num">failed</th></tr></thead>'
                    '<tbody>{rows}</tbody></table></div>', rows=rows)
    return fill('<section class="card"><h2>Agents</h2>{body}</section>', body=body)


def _gateway(gateway: dict[str, Any]) -> Html:
    if gateway.get("running"):
        where = fill('serving at <code>{url}</code>', url=gateway.get("url"))
    else:
        where = Html("not running (figures as last saved)")
    saved = fill('<p class="savings"><span class="big">${saved}</span> saved by deduplication and caching; '
                 '${spent} spent (${would} without them).</p>', saved=f"{gateway.get('usd_saved', 0):.4f}",
                 spent=f"{gateway.get('usd', 0):.4f}", would=f"{gateway.get('usd_would_be', 0):.4f}")
    figures = join(fill("<div><dt>{label}</dt><dd>{value}</dd></div>", label=label, value=f"{gateway.get(key, 0):,}")
                   for key, label in GATEWAY_FIGURES)
    return fill('<section class="card"><h2>Gateway <span class="muted">{where}</span></h2>{saved}'
                '<dl class="figures">{figures}</dl></section>', where=where, saved=saved, figures=figures)


def _merge_queue(queue: dict[str, Any] | None) -> Html:
    if queue is None:
        body = Html('<p class="muted">Tasks share one checkout (<code>[workspace] mode = "shared"</code>): '
                    'nothing to land.</p>')
    else:
        held = queue.get("held")
        last = queue.get("last_landed")
        body = fill('<dl class="figures"><div><dt>waiting</dt><dd>{waiting}</dd></div>'
                    '<div><dt>gating</dt><dd>{gating}</dd></div><div><dt>held</dt><dd>{held}</dd></div>'
                    '<div><dt>landed</dt><dd>{landed}</dd></div><div><dt>conflicts</dt><dd>{conflicts}</dd></div>'
                    '<div><dt>last landed</dt><dd>{last}</dd></div></dl>',
                    waiting=queue.get("waiting", 0), gating=_task_link(queue.get("gating")) or "—",
                    held=fill("{task}: {reason}", task=_task_link(held["task"]), reason=held.get("reason"))
                    if held else "—", landed=queue.get("landed", 0), conflicts=queue.get("conflicts", 0),
                    last=fill("{task} at <code>{commit}</code>", task=_task_link(last["task"]),
                              commit=str(last["commit"])[:12]) if last else "—")
    return fill('<section class="card"><h2>Merge queue</h2>{body}</section>', body=body)


def filters(state: str | None, text: str) -> Html:
    """The task list's filter form (it stays put while the list under it refreshes)."""
    options = join(fill('<option value="{value}"{selected}>{label}</option>', value=value, label=value or "any",
                        selected=Html(" selected" if value == (state or "") else ""))
                   for value in ("", *STATES))
    return fill('<form id="filters" class="filters" method="get" action="/ui/tasks" role="search">'
                '<label>State <select name="state">{options}</select></label>'
                '<label>Text <input type="search" name="q" value="{text}" placeholder="id, title, reason, file">'
                '</label><button type="submit">Filter</button></form>', options=options, text=text)


def matches(row: TaskRow, text: str) -> bool:
    """Whether ``text`` (any case) occurs in the row's id, title, reason, file or agent."""
    needle = text.strip().lower()
    return not needle or any(needle in (value or "").lower()
                             for value in (row.id, row.title, row.reason, row.source, row.agent, row.worker))


def task_list(rows: list[TaskRow], total: int) -> Html:
    """The filtered rows as a table (the first ``MAX_ROWS``)."""
    shown = rows[:MAX_ROWS]
    more = f"; the first {MAX_ROWS} shown, filter to narrow" if len(rows) > MAX_ROWS else ""
    count = fill('<p class="muted" id="count">{n} of {total} tasks{more}</p>', n=len(rows), total=total, more=more)
    if not rows:
        return join([count, Html('<p class="empty">No task matches. Drop task files into <code>tasks/</code> or '
                                 'run <code>coordinator add</code>.</p>')])
    body = join(fill('<tr data-task="{id}"><td class="task">{link}<div class="title">{title}</div></td>'
                     '<td>{badge}</td><td class="num wide">{priority}</td><td class="num">{attempts}/{max}</td>'
                     '<td class="wide">{agent}</td><td class="reason">{reason}</td></tr>',
                     id=r.id, link=_task_link(r.id) if r.state != State.INVALID else r.id, title=r.title,
                     badge=state_badge(r.state), priority=r.priority, attempts=r.attempts, max=r.max_attempts,
                     agent=r.worker or r.agent, reason=r.reason) for r in shown)
    return fill('{count}<div class="scroll"><table class="tasks"><thead><tr><th>task</th><th>state</th>'
                '<th class="num wide">priority</th><th class="num">attempts</th><th class="wide">agent</th>'
                '<th>reason</th></tr></thead><tbody>{body}</tbody></table></div>', count=count, body=body)


def list_query(state: str | None, text: str) -> str:
    """The task list's URL for these filters."""
    query = {k: v for k, v in (("state", state), ("q", text)) if v}
    return "/ui/tasks" + (f"?{urlencode(query)}" if query else "")


def task_detail(data: dict[str, Any]) -> Html:
    """One task (``show --json``): state, actions, definition, record, claim and problems."""
    task, record, claim = data["task"], data.get("record") or {}, data.get("claim")
    state = data["state"]
    facts = [("title", task.get("title")), ("priority", task.get("priority")), ("agent", task.get("agent")),
             ("attempts", f"{record.get('attempts', 0)}/{task.get('max_attempts', '')}"),
             ("file", task.get("source")), ("depends on", ", ".join(task.get("depends_on") or []) or None),
             ("why", data.get("reason")), ("worker", record.get("agent")),
             ("claimed", _when(record.get("claimed_at"))),
             ("finished", _when(record.get("finished_at")) if State(state).is_finished else None),
             ("usage", _usage(record.get("usage"))), ("branch", record.get("branch")),
             ("landed", record.get("landed")),
             ("claim", fill("{agent}, pid {pid}, epoch {epoch}", **{k: claim.get(k) for k in ("agent", "pid", "epoch")})
              if claim else None)]
    dl = join(fill("<div><dt>{k}</dt><dd>{v}</dd></div>", k=k, v=v) for k, v in facts if v not in (None, ""))
    problems = join(fill("<li>{p}</li>", p=p) for p in data.get("problems") or [])
    prompt = task.get("prompt")
    return fill('<section class="card"><h1 class="task-head"><span class="task-id">{id}</span> {badge}</h1>'
                '<div class="actions">{actions}</div><dl class="facts">{dl}</dl>{problems}{prompt}</section>',
                id=task.get("id") or task.get("source"), badge=state_badge(state, "state"), dl=dl,
                actions=_actions(task, state), problems=fill('<ul class="problems">{p}</ul>', p=problems) if problems
                else "", prompt=fill('<details><summary>Prompt</summary><pre class="prompt">{p}</pre></details>',
                                     p=prompt) if prompt else "")


def task_log(task_id: str) -> Html:
    """The live log the script fills from the task's event stream."""
    return fill('<section class="card"><h2>Log <span id="log-note" class="muted"></span></h2>'
                '<pre id="log" class="log" data-events="{events}" aria-live="polite"></pre></section>',
                events=f"{API}/tasks/{quote(task_id, safe='')}/events")


def _actions(task: dict[str, Any], state: str) -> Html:
    task_id = task.get("id")
    if not task_id or state == State.INVALID:
        return EMPTY
    stored = State.PENDING if state == State.BLOCKED else State(state)
    buttons = [fill('<button type="button" class="{kind}" data-action="{kind}" data-url="{url}" '
                    'data-confirm="{confirm}">{label}</button>', kind=kind, label=label, confirm=f"{label} {task_id}?",
                    url=f"{API}/tasks/{quote(task_id, safe='')}/{kind}")
               for kind, label in (("cancel", "Cancel"), ("retry", "Retry")) if can(kind, stored)]
    return join(buttons)


def login_help(reason: str) -> str:
    """The page for a browser that is not signed in: how to get a login link (no fleet data)."""
    body = fill('<section class="card"><h1>Sign in</h1><p>{reason}</p><p>Run <code>coordinator ui --open</code> '
                'in the fleet root (or <code>coordinator ui</code> and open the link it prints). A link works once, '
                'for a minute.</p></section>', reason=reason)
    return fill('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                '<meta name="viewport" content="width=device-width, initial-scale=1"><title>Sign in · coordinator'
                '</title><link rel="stylesheet" href="/ui/static/dashboard.css"></head><body><main>{body}</main>'
                '</body></html>\n', body=body)


def _task_link(task_id: str | None) -> Html:
    return fill('<a href="{href}">{id}</a>', href=task_href(task_id), id=task_id) if task_id else EMPTY


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} s"


def _when(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else None


def _usage(usage: dict[str, Any] | None) -> str | None:
    if not usage:
        return None
    return ", ".join(f"{k.replace('_', ' ')} {v:.4f}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                     for k, v in usage.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
