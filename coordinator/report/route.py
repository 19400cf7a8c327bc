"""Where a request from a task would be routed, and why (``coordinator route --task ID``), as plain data.

It makes the gateway's own decision (``RoutingTable.decide``, gateway/routing.py)
on the same facts the gateway reads from the task's token: its labels, priority
and ``[agents.NAME]``, and the request's estimated input tokens. For an ``llm``
agent the estimate is that of the exact body the runner would send on a first
attempt (the size of its JSON / 4, as the gateway counts); a command agent's
request is not known before it runs, so its prompt stands in (pass
``--input-tokens`` to say better). The budget check uses what the task has spent
in its current retry generation, from the running gateway or the stats it saved
last (the gateway also counts what requests in flight hold, which cannot be seen here).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..atomic import read_json
from ..config import FleetConfig
from ..errors import BudgetError, CoordinatorError, TaskError
from ..gateway.accounting import FREE
from ..gateway.budgets import Estimate, check_budget
from ..gateway.client import read_gateway, stats_path
from ..gateway.context_cache import CHARS_PER_TOKEN
from ..gateway.routing import Facts, RoutingTable, Target, explain
from ..store import open_store
from ..tasks import Task
from ..tasks.cache import load_cached


def route_report(config: FleetConfig, task_id: str, env: Mapping[str, str], *, model: str | None = None,
                 input_tokens: int | None = None) -> dict[str, Any]:
    """The routing of a request from ``task_id``: rule, alias, downgrades, chain, budget, and why."""
    task = load_cached(config).tasks.get(task_id)
    if task is None:
        raise TaskError(f"no valid task {task_id!r}; `coordinator tasks` lists them", task_id=task_id)
    agent_name = task.agent or config.fleet.default_agent
    agent = config.agent_named(agent_name)
    requested = model or task.model or agent.model
    estimated_from, max_output = "--input-tokens", agent.max_tokens if agent.kind == "llm" else None
    if input_tokens is None:
        input_tokens, estimated_from = _estimate(config, task, agent_name)
    facts = Facts(frozenset(task.labels), task.priority, agent_name, input_tokens)
    table = RoutingTable(config)
    spent, fleet_spent = _spent(config, task_id)
    out: dict[str, Any] = {"task": task_id, "agent": agent_name, "requested": requested,
                           "input_tokens": input_tokens, "estimated_from": estimated_from, "max_tokens": max_output,
                           "budget": {"max_usd": task.max_usd, "max_tokens_budget": task.max_tokens_budget,
                                      "spent_usd": round(spent[0], 6), "spent_tokens": spent[1]}}

    def fits(target: Target) -> BudgetError | None:
        kind = _kind(config, target.backend, env)
        estimate = Estimate.of(input_tokens, max_output, FREE if kind == "echo" else target.price)
        try:
            check_budget(fleet_spent=fleet_spent, fleet_max=config.fleet.max_usd, task_id=task_id, task_spent=spent,
                         max_usd=task.max_usd, max_tokens=task.max_tokens_budget,  # type: ignore[arg-type]
                         estimate_usd=estimate.usd, estimate_tokens=estimate.tokens)
        except BudgetError as exc:
            return exc
        return None

    try:
        decision = table.decide(facts, requested, fits)
    except BudgetError as exc:
        return {**out, "alias": None, "refused": str(exc), "status": 402,
                "why": explain_refusal(table, facts, requested)}
    target = decision.target
    rule = table.rules[decision.rule] if decision.rule is not None else None
    return {**out, "alias": target.alias, "backend": target.backend, "model": target.model, "how": decision.how,
            "rule": {"index": decision.rule, "name": rule.name} if rule is not None else None,
            "downgraded_from": [alias for alias, _ in decision.downgraded],
            "fallback": [{"alias": h.alias, "backend": h.backend, "model": h.model} for h in table.chain(target)],
            "why": explain(table, facts, decision)}


def explain_refusal(table: RoutingTable, facts: Facts, requested: str) -> list[str]:
    """Why no alias fits: the rule lines of the decision made without a budget, then the refusal."""
    lines = explain(table, facts, table.decide(facts, requested))
    return lines[:-1] + ["budget: no alias of the downgrade chain fits; the gateway answers 402"]


def _estimate(config: FleetConfig, task: Task, agent_name: str) -> tuple[int, str]:
    """(input tokens, how they were estimated) of the task's first request."""
    agent = config.agent_named(agent_name)
    if agent.kind != "llm":
        return len(task.rendered_prompt().encode()) // CHARS_PER_TOKEN, "the prompt (a command builds its own request)"
    from ..runners import RunContext  # noqa: PLC0415
    from ..runners.llm import assemble  # noqa: PLC0415

    ctx = RunContext(task=task, agent_id="route", agent_name=agent_name, agent=agent, config=config, attempt=1,
                     run_dir=config.state_dir, workdir=config.root, env={}, should_stop=lambda: None)
    try:
        body = json.dumps(assemble(ctx)).encode()
    except (ValueError, OSError, CoordinatorError) as exc:  # a bad context glob fails the task when it runs
        return len(task.rendered_prompt().encode()) // CHARS_PER_TOKEN, f"the prompt (its context: {exc})"
    how = "the llm runner's request body" + (" (without its dependencies' outputs)" if task.depends_on else "")
    return len(body) // CHARS_PER_TOKEN, how


def _spent(config: FleetConfig, task_id: str) -> tuple[tuple[float, int], float]:
    """((USD, tokens) the task's current generation has spent, the fleet's USD), live or as last saved."""
    gateway = read_gateway(config)
    stats = (gateway.stats() if gateway is not None else None) or read_json(stats_path(config)) or {}
    record = open_store(config).read_record(task_id)
    generation = record.generation if record is not None else 0
    entry = (stats.get("budgets") or {}).get(task_id) or {}
    spent = (float(entry.get("usd", 0.0)), int(entry.get("tokens", 0))) \
        if int(entry.get("generation", 0)) >= generation else (0.0, 0)
    return spent, float(stats.get("usd", 0.0) or 0.0)


def _kind(config: FleetConfig, backend: str, env: Mapping[str, str]) -> str:
    from ..backends import auto_kind  # noqa: PLC0415  (no SDK: it only reads the config and the env)

    return auto_kind(config.backends[backend], env)
