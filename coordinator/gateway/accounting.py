"""Usage, prices and budgets: what each task, agent, model and backend spent and saved.

Usage arrives already normalised (``dialects.Usage``: each API's dialect reads its own
numbers from JSON bodies and SSE streams) to four counts: input tokens billed at the
full rate, output tokens, cache-write and cache-read tokens.

Money: a request that made an upstream call is billed at the model's price; a request
served by dedup (joined or cache hit) costs nothing, and what it would have cost is
"saved". Context caching saves (or, for the write, costs) the difference from
billing every prompt token at the input rate. A free backend (echo) bills $0 and
keeps what the call would have cost apart, as ``usd_would_be``, so a trial run's
figures are not mistaken for spending.

Budgets count per (task, retry generation): ``coordinator retry`` raises the
generation, and the new generation starts from zero (``spent``). The budget rule
itself and reservations are ``budgets.py``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import FleetConfig, ModelAlias
from .budgets import check_budget
from .dialects import Usage

STAT_KEYS = ("requests", "upstream_calls", "dedup_joined", "dedup_hits", "input_tokens", "output_tokens",
             "cache_read_tokens", "cache_write_tokens", "usd", "usd_saved", "usd_would_be", "tokens_saved")
_USD_KEYS = ("usd", "usd_saved", "usd_would_be")
UNASSIGNED = "unassigned"  # the task row of requests made with the fleet token
SCOPES = ("tasks", "agents", "models", "backends", "aliases")


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float

    def usd(self, usage: Usage) -> float:
        """What ``usage`` costs."""
        return (usage.input_tokens * self.input + usage.output_tokens * self.output
                + usage.cache_write_tokens * self.cache_write + usage.cache_read_tokens * self.cache_read) / 1e6

    def usd_uncached(self, usage: Usage) -> float:
        """What ``usage`` would cost with every prompt token at the input rate."""
        prompt = usage.input_tokens + usage.cache_write_tokens + usage.cache_read_tokens
        return (prompt * self.input + usage.output_tokens * self.output) / 1e6


def _anthropic(inp: float, out: float) -> Price:
    # 5-minute cache writes cost 1.25x input, reads 0.1x (Anthropic pricing page).
    return Price(inp, out, inp * 1.25, inp * 0.1)


def _openai(inp: float, out: float, cached: float) -> Price:
    # OpenAI bills no cache writes; cached input has its own rate.
    return Price(inp, out, inp, cached)


# Prefix of the upstream model name → price; the longest matching prefix wins.
DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4-5": _anthropic(5.0, 25.0), "claude-opus-4-6": _anthropic(5.0, 25.0),
    "claude-opus-4": _anthropic(15.0, 75.0),
    "claude-sonnet-5": _anthropic(3.0, 15.0),  # assumed: every Sonnet generation so far is $3 / $15
    "claude-sonnet-4": _anthropic(3.0, 15.0), "claude-3-7-sonnet": _anthropic(3.0, 15.0),
    "claude-3-5-sonnet": _anthropic(3.0, 15.0), "claude-haiku-4": _anthropic(1.0, 5.0),
    "claude-3-5-haiku": _anthropic(0.8, 4.0), "claude-3-haiku": _anthropic(0.25, 1.25),
    "claude-3-opus": _anthropic(15.0, 75.0),
    "gpt-5-nano": _openai(0.05, 0.4, 0.005), "gpt-5-mini": _openai(0.25, 2.0, 0.025),
    "gpt-5": _openai(1.25, 10.0, 0.125), "gpt-4.1-nano": _openai(0.1, 0.4, 0.025),
    "gpt-4.1-mini": _openai(0.4, 1.6, 0.1), "gpt-4.1": _openai(2.0, 8.0, 0.5),
    "gpt-4o-mini": _openai(0.15, 0.6, 0.075), "gpt-4o": _openai(2.5, 10.0, 1.25),
    "o4-mini": _openai(1.1, 4.4, 0.275), "o3": _openai(2.0, 8.0, 0.5),
}
# Unknown models (local servers, new names) are priced like a mid-size model so that
# budgets still bite; set the alias's prices in fleet.toml to be exact (0 for free).
FALLBACK_PRICE = _anthropic(3.0, 15.0)
FREE = Price(0.0, 0.0, 0.0, 0.0)


def price_for(model: str, alias: ModelAlias | None = None) -> Price:
    """The price of ``model``: the default table, overridden field by field by the alias."""
    best = max((p for p in DEFAULT_PRICES if model.startswith(p)), key=len, default=None)
    base = DEFAULT_PRICES[best] if best else FALLBACK_PRICE
    if alias is None:
        return base
    pick = (lambda own, default: default if own is None else own)
    return Price(pick(alias.input_usd_per_mtok, base.input), pick(alias.output_usd_per_mtok, base.output),
                 pick(alias.cache_write_usd_per_mtok, base.cache_write),
                 pick(alias.cache_read_usd_per_mtok, base.cache_read))


def empty_stats() -> dict[str, float]:
    """A zeroed stats row."""
    return {key: 0 if key not in _USD_KEYS else 0.0 for key in STAT_KEYS}


@dataclass(frozen=True)
class Who:
    """Whom a request is accounted to."""

    task: str | None = None
    agent: str | None = None
    model: str = ""
    backend: str = ""
    generation: int = 0  # the task's retry generation, for its budget
    alias: str = ""  # the [models] alias the request was routed to (gateway/routing.py)


class Ledger:
    """Running totals for the fleet and per task, agent, model, backend and alias; and per alias of each task."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.totals = empty_stats()
        self.scopes: dict[str, dict[str, dict[str, float]]] = {scope: {} for scope in SCOPES}
        self.task_aliases: dict[str, dict[str, dict[str, float]]] = {}  # task → alias → row: where it was routed
        self.version = 0  # bumped on every change, so the saver writes only when needed
        # task → [generation, usd, tokens]: the spend its budget counts (the latest generation only)
        self.generations: dict[str, list[float]] = {}
        self._row_cache: dict[Who, list[dict[str, float]]] = {}

    def _rows(self, who: Who) -> list[dict[str, float]]:
        rows = self._row_cache.get(who)
        if rows is None:
            if len(self._row_cache) > 10_000:
                self._row_cache.clear()
            rows = self._row_cache[who] = self._resolve_rows(who)
        return rows

    def _resolve_rows(self, who: Who) -> list[dict[str, float]]:
        rows = [self.totals]
        for scope, name in (("tasks", who.task), ("agents", who.agent), ("models", who.model),
                            ("backends", who.backend), ("aliases", who.alias)):
            if name:
                rows.append(_row(self.scopes[scope], name))
        if who.task and who.alias:
            rows.append(_row(self.task_aliases.setdefault(who.task, {}), who.alias))
        return rows

    def _add(self, who: Who, deltas: Mapping[str, float]) -> None:
        for row in self._rows(who):
            for key, value in deltas.items():
                row[key] += value
        self.version += 1

    def count_request(self, who: Who) -> None:
        """A request was admitted."""
        self._add(who, {"requests": 1})

    def count_upstream_call(self, who: Who) -> None:
        """One upstream attempt was made (retries count each)."""
        self._add(who, {"upstream_calls": 1})

    def record_billed(self, who: Who, usage: Usage, price: Price, would_be: Price | None = None) -> float:
        """A flight's upstream call finished: bill its usage to the request that led it; returns USD.

        ``would_be`` is the model's real price when ``price`` is a free backend's: the
        call costs $0, ``usd_would_be`` gets what it would have cost, and what dedup
        and prompt caching saved is reckoned at that price too.
        """
        cost = price.usd(usage)
        basis = would_be or price  # savings of a free backend are shown at the model's price, like its cost
        self._add(who, {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                        "cache_write_tokens": usage.cache_write_tokens, "cache_read_tokens": usage.cache_read_tokens,
                        "usd": cost, "usd_saved": basis.usd_uncached(usage) - basis.usd(usage),
                        "usd_would_be": would_be.usd(usage) if would_be is not None else 0.0})
        if who.task:
            entry = self.generations.get(who.task)
            if entry is None or who.generation > entry[0]:
                entry = self.generations[who.task] = [who.generation, 0.0, 0]
            entry[1] += cost
            entry[2] += usage.total
        return cost

    def spent(self, task_id: str, generation: int = 0) -> tuple[float, int]:
        """(USD, tokens) that ``task_id``'s budget has used in ``generation`` (a newer one starts at zero)."""
        entry = self.generations.get(task_id)
        if entry is None or generation > entry[0]:
            return 0.0, 0
        return entry[1], int(entry[2])

    def record_shared(self, who: Who, how: str, usage: Usage, price: Price) -> float:
        """A request was served by dedup (``joined`` or ``hit``): nothing billed, its cost saved."""
        saved = price.usd_uncached(usage)
        self._add(who, {"dedup_joined" if how == "joined" else "dedup_hits": 1, "usd_saved": saved,
                        "tokens_saved": usage.total})
        return saved

    def task_row(self, task_id: str) -> dict[str, Any]:
        """One task's stats (zeros when it has none yet), with ``aliases``: the same per alias it was routed to."""
        return {**(self.scopes["tasks"].get(task_id) or empty_stats()),
                "aliases": {alias: _rounded(row) for alias, row in self.task_aliases.get(task_id, {}).items()}}

    def check_budget(self, task_id: str | None, max_usd: float | None, max_tokens: int | None,
                     generation: int = 0) -> None:
        """Raise BudgetError when the fleet or the task has spent its budget (nothing reserved, no estimate)."""
        spent = self.spent(task_id, generation) if task_id else None
        check_budget(fleet_spent=self.totals["usd"], fleet_max=self.config.fleet.max_usd, task_id=task_id,
                     task_spent=spent, max_usd=max_usd, max_tokens=max_tokens)

    def snapshot(self) -> dict[str, Any]:
        """Totals plus every scope, as plain JSON-ready dicts."""
        data: dict[str, Any] = {key: _round(key, self.totals[key]) for key in STAT_KEYS}
        for scope, table in self.scopes.items():
            data[scope] = {name: _rounded(row) for name, row in table.items()}
        data["task_aliases"] = {task: {alias: _rounded(row) for alias, row in rows.items()}
                                for task, rows in self.task_aliases.items()}
        data["budgets"] = {task: {"generation": int(g), "usd": round(usd, 9), "tokens": int(tokens)}
                           for task, (g, usd, tokens) in self.generations.items()}
        return data

    def load(self, data: Mapping[str, Any]) -> None:
        """Restore totals saved by a previous gateway (unknown keys are ignored)."""
        self._row_cache.clear()
        for key in STAT_KEYS:
            if isinstance(data.get(key), (int, float)):
                self.totals[key] = data[key]
        for scope in self.scopes:
            _load_rows(self.scopes[scope], data.get(scope))
        for task, rows in (data.get("task_aliases") or {}).items():
            if isinstance(rows, Mapping):
                _load_rows(self.task_aliases.setdefault(task, {}), rows)
        self._load_budgets(data)

    def _load_budgets(self, data: Mapping[str, Any]) -> None:
        """Per-generation spend; a file from before generations counts each task's total as generation 0."""
        saved = data.get("budgets")
        if not isinstance(saved, Mapping):
            self.generations = {task: [0, row["usd"], row["input_tokens"] + row["output_tokens"]
                                       + row["cache_read_tokens"] + row["cache_write_tokens"]]
                                for task, row in self.scopes["tasks"].items()}
            return
        for task, entry in saved.items():
            try:
                self.generations[task] = [int(entry["generation"]), float(entry["usd"]), int(entry["tokens"])]
            except (KeyError, TypeError, ValueError):
                continue  # a damaged entry: that task's budget starts afresh


def _round(key: str, value: float) -> float:
    return round(value, 9) if key in _USD_KEYS else int(value)


def _rounded(row: Mapping[str, float]) -> dict[str, float]:
    return {k: _round(k, v) for k, v in row.items()}


def _row(table: dict[str, dict[str, float]], name: str) -> dict[str, float]:
    row = table.get(name)
    if row is None:
        row = table[name] = empty_stats()
    return row


def _load_rows(table: dict[str, dict[str, float]], saved: object) -> None:
    """Saved rows into ``table`` (unknown keys and damaged rows are ignored)."""
    for name, row in (saved.items() if isinstance(saved, Mapping) else ()):
        if isinstance(row, Mapping):
            target = _row(table, name)
            for key in STAT_KEYS:
                if isinstance(row.get(key), (int, float)):
                    target[key] = row[key]
