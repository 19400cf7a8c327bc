"""The fleet status report (DESIGN §8): built once, rendered as rich tables or JSON.

It works with or without a running fleet: agents are judged by their heartbeat
files and psutil, claims by the same staleness rule the protocol uses, and the
gateway by ``gateway.json`` plus a live stats call, falling back to the stats it
last saved when it is gone.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .claims import HOST, process_is_alive, stale_reason
from .config import FleetConfig
from .gateway_client import read_gateway
from .report import STATES, FleetSnapshot, snapshot
from .store import FileStore, read_json

GATEWAY_KEYS = ("requests", "upstream_calls", "dedup_joined", "dedup_hits", "input_tokens", "output_tokens",
                "cache_read_tokens", "cache_write_tokens", "usd", "usd_saved")


def build_status(config: FleetConfig, snap: FleetSnapshot | None = None) -> dict[str, Any]:
    """The whole report as the stable JSON shape of DESIGN §8."""
    store = FileStore(config.state_dir)
    snap = snap or snapshot(config, store)
    now = time.time()
    claims_by_agent = {c.agent: c for c in snap.claims}
    agents = [_agent_row(a, now, config) for a in store.read_agents()]
    stale = [{"task": c.task, "agent": c.agent, "pid": c.pid, "epoch": c.epoch, "reason": reason,
              "age_s": round(now - c.renewed_at, 1)}
             for c in snap.claims if (reason := stale_reason(c, now)) is not None]
    gateway = gateway_status(config)
    invalid = [{"path": bad.path, "error": bad.error} for bad in snap.taskset.invalid]
    dead_holding = [a["id"] for a in agents if a["state"] == "dead" and a["id"] in claims_by_agent]
    problems = []
    if stale:
        problems.append(f"{len(stale)} stale claim(s)")
    if dead_holding:
        problems.append(f"dead agent(s) holding claims: {', '.join(dead_holding)}")
    if invalid:
        problems.append(f"{len(invalid)} invalid task file(s)")
    if gateway.get("unreachable"):
        problems.append("gateway unreachable")
    return {"tasks": snap.counts(), "agents": agents, "gateway": gateway, "stale_claims": stale,
            "invalid_files": invalid, "healthy": not problems, "problems": problems}


def _agent_row(data: dict[str, Any], now: float, config: FleetConfig) -> dict[str, Any]:
    pid, started = int(data.get("pid", 0)), float(data.get("pid_started_at", 0.0))
    age = round(now - float(data.get("heartbeat_at", 0.0)), 1)
    if data.get("host") == HOST:
        alive = process_is_alive(pid, started)
    else:
        alive = age <= config.fleet.lease_s
    state = data.get("state", "unknown")
    if not alive and state != "stopped":
        state = "dead"
    return {"id": data.get("id"), "pid": pid, "alive": alive, "state": state,
            "task": data.get("task") if alive else None, "heartbeat_age_s": age,
            "task_started_at": data.get("task_started_at"), "done": data.get("done", 0),
            "failed": data.get("failed", 0)}


def gateway_status(config: FleetConfig) -> dict[str, Any]:
    """Live counters from the running gateway, else the last ones it saved."""
    info = read_gateway(config)
    out: dict[str, Any] = {"running": False, "url": None}
    stats = None
    if info is not None:
        out["url"] = info.url
        stats = info.stats()
        out["running"] = stats is not None
        out["unreachable"] = stats is None
    elif (config.state_dir / "gateway.json").exists():
        out["unreachable"] = True  # gateway.json left by a gateway that died
    if stats is None:
        stats = read_json(config.state_dir / "gateway-stats.json") or {}
    for key in GATEWAY_KEYS:
        value = stats.get(key, 0)
        out[key] = round(float(value), 6) if key.startswith("usd") else int(value or 0)
    return out


def render_status(status: dict[str, Any]) -> RenderableType:
    """The report as rich renderables (queue, agents, gateway, problems)."""
    parts: list[RenderableType] = [queue_line(status["tasks"]), agents_table(status["agents"]),
                                   gateway_line(status["gateway"])]
    for claim in status["stale_claims"]:
        parts.append(Text(f"stale claim: {claim['task']} held by {claim['agent']} (pid {claim['pid']}, "
                          f"{claim['reason']}, {claim['age_s']}s)", style="yellow"))
    for bad in status["invalid_files"]:
        parts.append(Text(f"invalid: {bad['error']}", style="red"))
    health = "healthy" if status["healthy"] else "unhealthy: " + "; ".join(status["problems"])
    parts.append(Text(health, style="green" if status["healthy"] else "bold red"))
    return Group(*parts)


def queue_line(counts: dict[str, int]) -> Text:
    """``pending 3  running 2  done 10 ...`` with each state coloured."""
    styles = {"running": "cyan", "done": "green", "failed": "red", "blocked": "yellow", "invalid": "red"}
    text = Text("tasks  ")
    for state in STATES:
        text.append(f"{state} {counts.get(state, 0)}  ", style=styles.get(state, "white"))
    return text


def agents_table(agents: list[dict[str, Any]], tokens: dict[str, int] | None = None) -> Table:
    """One row per agent: state, task, elapsed, heartbeat age, tokens, done/failed."""
    table = Table(box=None, pad_edge=False, show_edge=False)
    for name in ("AGENT", "PID", "STATE", "TASK", "ELAPSED", "BEAT", "TOKENS", "DONE", "FAILED"):
        table.add_column(name, no_wrap=True)
    now = time.time()
    for agent in agents:
        started = agent.get("task_started_at")
        elapsed = f"{now - started:.0f}s" if agent.get("task") and started else "-"
        used = (tokens or {}).get(agent["task"] or "", 0)
        style = {"dead": "red", "running": "cyan"}.get(agent["state"], "white")
        table.add_row(escape(str(agent["id"])), str(agent["pid"]), f"[{style}]{agent['state']}[/]",
                      escape(agent["task"] or "-"),
                      elapsed, f"{agent['heartbeat_age_s']:.1f}s", str(used) if used else "-",
                      str(agent["done"]), str(agent["failed"]))
    if not agents:
        table.add_row("(no agents)", "", "", "", "", "", "", "", "")
    return table


def gateway_line(gateway: dict[str, Any]) -> Text:
    """Requests, upstream calls, dedup and cache figures, USD and USD saved."""
    where = gateway["url"] if gateway["running"] else ("unreachable" if gateway.get("unreachable") else "stopped")
    return Text(f"gateway {where}  requests {gateway['requests']}  upstream {gateway['upstream_calls']}  "
                f"joined {gateway['dedup_joined']}  hits {gateway['dedup_hits']}  "
                f"cache read {gateway['cache_read_tokens']} / write {gateway['cache_write_tokens']} tok  "
                f"${gateway['usd']:.4f} (saved ${gateway['usd_saved']:.4f})")


def print_status(status: dict[str, Any], console: Console | None = None) -> None:
    """Print the rendered report."""
    (console or Console()).print(render_status(status))
