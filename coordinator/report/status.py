"""The fleet status report (`status --json`, docs/architecture.md) as plain data: built once, rendered by ``ui/`` or sent as JSON.

It works with or without a running fleet: agents are judged by their heartbeats
and psutil, claims by the same staleness rule the protocol uses, and the gateway
by ``gateway.json`` plus a live stats call, falling back to the stats it last
saved when it is gone. The time is passed in, so a report is a pure function of
the fleet's state and ``now``.
"""

from __future__ import annotations

from typing import Any

from ..atomic import read_json
from ..config import FleetConfig
from ..gateway.accounting import STAT_KEYS
from ..gateway.client import gateway_path, read_gateway, stats_path
from ..liveness import HOST, process_is_alive
from ..queue.claims import stale_reason
from ..errors import StoreUnavailableError
from ..store import Store, open_store
from .rows import FleetSnapshot, snapshot


# What status shows per [models] alias (the routing of requests: gateway/routing.py).
ALIAS_KEYS = ("requests", "upstream_calls", "input_tokens", "output_tokens", "usd")


def build_status(config: FleetConfig, now: float, snap: FleetSnapshot | None = None,
                 store: Store | None = None) -> dict[str, Any]:
    """The whole report as the stable JSON shape of `status --json`, as of wall time ``now``.

    An unreachable state store is a report too (``store_outage``): agents wait it out, and so does status.
    """
    try:
        return fleet_status(config, now, snap, store)
    except StoreUnavailableError as exc:
        return store_outage(config, exc)


def store_outage(config: FleetConfig, exc: StoreUnavailableError) -> dict[str, Any]:
    """What can be said while the state store cannot be reached: that, and the gateway."""
    problems = [f"the state store at {exc.url} is unreachable; agents are waiting for it and resume when it answers"]
    gateway = gateway_status(config)
    if gateway.get("unreachable"):
        problems.append("gateway unreachable")
    return {"tasks": {}, "agents": [], "gateway": gateway, "stale_claims": [], "invalid_files": [],
            "healthy": False, "problems": problems, "paused": False,
            "store": {"url": exc.url, "reachable": False, "error": str(exc)}}


def fleet_status(config: FleetConfig, now: float, snap: FleetSnapshot | None = None,
                 store: Store | None = None) -> dict[str, Any]:
    """The report, read from a store that answers."""
    store = store or open_store(config)
    snap = snap or snapshot(config, store)
    claims_by_agent = {c.agent: c for c in snap.claims}
    agents = [agent_row(a, now, config.fleet.lease_s) for a in store.read_agents()]
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
    if (gateway.get("config") or {}).get("refused"):
        problems.append(f"the gateway refused fleet.toml and still serves the last good one: "
                        f"{gateway['config']['refused']['error']}")
    report = {"tasks": snap.counts(), "agents": agents, "gateway": gateway, "stale_claims": stale,
              "invalid_files": invalid, "healthy": not problems, "problems": problems, "paused": store.is_paused()}
    if config.workspace.mode == "worktree":
        from .merge_queue import merge_queue  # noqa: PLC0415  (only fleets with workspaces)

        report["merge_queue"] = merge_queue(store)
    return report


def fleet_figures(config: FleetConfig, now: float, store: Store) -> dict[str, Any]:
    """The fleet's numbers for the gateway's ``/metrics``: tasks by state, agents by state, the merge queue."""
    agents: dict[str, int] = {}
    for data in store.read_agents():
        state = agent_row(data, now, config.fleet.lease_s)["state"]
        agents[state] = agents.get(state, 0) + 1
    figures = {"tasks": snapshot(config, store).counts(), "agents": agents,
               "agents_alive": sum(n for state, n in agents.items() if state not in ("dead", "stopped"))}
    if config.workspace.mode == "worktree":
        from .merge_queue import merge_queue  # noqa: PLC0415  (only fleets with workspaces)

        figures["merge_queue"] = merge_queue(store)
    return figures


def agent_row(data: dict[str, Any], now: float, lease_s: float) -> dict[str, Any]:
    """One agent as ``status`` shows it: alive by pid on this host, by heartbeat age elsewhere."""
    pid, started = int(data.get("pid", 0)), float(data.get("pid_started_at", 0.0))
    age = round(now - float(data.get("heartbeat_at", 0.0)), 1)
    alive = process_is_alive(pid, started) if data.get("host") == HOST else age <= lease_s
    state = data.get("state", "unknown")
    if not alive and state != "stopped":
        state = "dead"
    task = data.get("task") if alive else None
    task_started = data.get("task_started_at")
    return {"id": data.get("id"), "pid": pid, "alive": alive, "state": state, "task": task,
            "heartbeat_age_s": age, "task_started_at": task_started,
            "task_elapsed_s": round(now - task_started, 1) if task and task_started else None,
            "done": data.get("done", 0), "failed": data.get("failed", 0)}


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
    elif gateway_path(config).exists():
        out["unreachable"] = True  # gateway.json left by a gateway that died
    if stats is None:
        stats = read_json(stats_path(config)) or {}
    for key in STAT_KEYS:
        value = stats.get(key, 0)
        out[key] = round(float(value), 6) if key.startswith("usd") else int(value or 0)
    out["aliases"] = {alias: {key: row.get(key, 0) for key in ALIAS_KEYS}
                      for alias, row in (stats.get("aliases") or {}).items() if isinstance(row, dict)}
    if isinstance(stats.get("config"), dict):  # a live gateway: the fleet.toml generation it serves
        out["config"] = stats["config"]
    return out
