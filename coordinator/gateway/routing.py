"""Routing: which alias a request goes to, and the chain it may fall back along. The one owner of both.

``RoutingTable.decide`` is the one decision. The gateway makes it for every request
and ``coordinator route`` makes it to explain one, so the two cannot disagree:

1. **Rules.** The first ``[[routing]]`` table whose conditions all hold (the task's
   labels, priority and agent; the request's estimated input tokens) picks the alias.
2. **No rule matched:** the requested model's alias; a name that is not in ``[models]``
   goes to the ``default`` alias's backend with the name passed through unchanged
   (that is the alias ``default``, for downgrades, fallbacks and accounting).
3. **Budget.** While the caller's ``fits`` says the task's remaining budget cannot cover
   the request's estimate at that alias, follow its ``downgrade`` link. When no alias in
   the chain fits, the last refusal is raised (a ``BudgetError``, 402), naming the budget,
   how to raise it, and the aliases tried.

``RoutingTable.chain`` expands an alias into the hops a call may take: the alias on its
backend, then that backend's own ``fallback`` backends (same model), then each
``fallback`` alias in order, expanded the same way; each (alias, backend, model) once.
``fallback_reason`` says when the pipeline moves on to the next hop: the hop's retries
ran out on a retryable error, or its circuit is open. Never on a client error (4xx other
than 408/409/429, which are retryable), and never once a stream's first byte reached a client.

Pure: no I/O, no aiohttp; the prices of an alias without a ``model`` read the default
model from the anthropic SDK (``backends/models.py``) the first time they are needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ..config import FleetConfig, ModelAlias, RoutingRule
from ..errors import BudgetError, CircuitOpenError, RetryableError
from .accounting import Price, price_for

_MAX_CACHED = 10_000  # free-form model names must not grow the per-name caches forever


def upstream_model_of(alias: ModelAlias) -> str:
    """The alias's upstream model; unset means the current default (read from the SDK, on first need)."""
    if alias.model is not None:
        return alias.model
    from ..backends.models import default_model  # noqa: PLC0415 - imports the anthropic SDK

    return default_model()


@dataclass(frozen=True)
class Target:
    """Where a request goes: an alias on a backend, the upstream model name, and the alias's price."""

    alias: str
    backend: str
    model: str
    price: Price


@dataclass(frozen=True)
class Facts:
    """What rules match on: the task's labels, priority and agent, and the request's estimated input."""

    labels: frozenset[str] = frozenset()
    priority: int = 2
    agent: str | None = None  # the task's [agents.NAME]; None for requests under the fleet token
    input_tokens: int = 0


@dataclass(frozen=True)
class Decision:
    """The routed target, the rule that picked it (an index into ``[[routing]]``), and the downgrades taken."""

    target: Target
    requested: str
    rule: int | None = None
    downgraded: tuple[tuple[str, str], ...] = ()  # (alias, why the budget refused it), in the order tried

    @property
    def how(self) -> str:
        """``downgrade``, ``rule`` or ``requested``: why the request went where it went."""
        return "downgrade" if self.downgraded else "rule" if self.rule is not None else "requested"


# The caller's budget check: None when the estimate at the target fits, else the refusal.
Fits = Callable[[Target], BudgetError | None]


@dataclass(frozen=True)
class Rule:
    """A ``[[routing]]`` table compiled for matching: sets, so a rule costs a few comparisons."""

    name: str | None
    labels: frozenset[str]
    priorities: frozenset[int]
    agents: frozenset[str]
    max_input_tokens: int | None
    alias: str

    @classmethod
    def of(cls, rule: RoutingRule) -> Rule:
        """Compile one rule of the config."""
        return cls(rule.name, frozenset(rule.labels), frozenset(rule.priority), frozenset(rule.agent),
                   rule.max_input_tokens, rule.alias)

    def matches(self, facts: Facts) -> bool:
        """Whether every condition holds (the hot path; ``misses`` says the same in words)."""
        return (self.labels <= facts.labels and (not self.priorities or facts.priority in self.priorities)
                and (not self.agents or facts.agent in self.agents)
                and (self.max_input_tokens is None or facts.input_tokens <= self.max_input_tokens))

    def misses(self, facts: Facts) -> list[str]:
        """Each condition that does not hold, for a person (empty when the rule matches)."""
        out = []
        if not self.labels <= facts.labels:
            out.append(f"labels {', '.join(sorted(self.labels - facts.labels))} missing")
        if self.priorities and facts.priority not in self.priorities:
            out.append(f"priority {facts.priority} is not {' or '.join(map(str, sorted(self.priorities)))}")
        if self.agents and facts.agent not in self.agents:
            out.append(f"agent {facts.agent or '(none)'} is not {' or '.join(sorted(self.agents))}")
        if self.max_input_tokens is not None and facts.input_tokens > self.max_input_tokens:
            out.append(f"~{facts.input_tokens} input tokens is over {self.max_input_tokens}")
        return out

    def label(self, index: int) -> str:
        """``routing[2] "docs"`` — how logs and ``coordinator route`` name it."""
        return f"routing[{index}]" + (f" {self.name!r}" if self.name else "")


class RoutingTable:
    """The routing of one configuration: its rules, its aliases as targets, and their chains."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.rules = tuple(Rule.of(rule) for rule in config.routing)
        self._default_backend = config.models["default"].backend
        self._targets: dict[str, Target] = {}
        self._chains: dict[Target, tuple[Target, ...]] = {}

    def target(self, name: str) -> Target:
        """The alias ``name``, or a name passed through to the default alias's backend (priced by its name)."""
        found = self._targets.get(name)
        if found is None:
            alias = self.config.models.get(name)
            if alias is not None:
                model = upstream_model_of(alias)
                found = Target(name, alias.backend, model, price_for(model, alias))
            else:
                found = Target("default", self._default_backend, name, price_for(name))
            if len(self._targets) >= _MAX_CACHED:
                self._targets.clear()
            self._targets[name] = found
        return found

    def decide(self, facts: Facts, requested: object, fits: Fits | None = None) -> Decision:
        """Rules, then the requested model, then downgrades while ``fits`` refuses (module docstring)."""
        name = requested if isinstance(requested, str) else ""
        rule = next((i for i, r in enumerate(self.rules) if r.matches(facts)), None)
        target = self.target(self.rules[rule].alias if rule is not None else name)
        if fits is None:
            return Decision(target, name, rule)
        tried: list[tuple[str, str]] = []
        while (refusal := fits(target)) is not None:
            tried.append((target.alias, str(refusal)))
            following = self.config.models[target.alias].downgrade if target.alias in self.config.models else None
            if following is None or any(following == alias for alias, _ in tried):
                raise _refused(refusal, tried)
            target = self.target(following)
        return Decision(target, name, rule, tuple(tried))

    def chain(self, target: Target) -> tuple[Target, ...]:
        """Every hop a call to ``target`` may take, in order (module docstring)."""
        found = self._chains.get(target)
        if found is None:
            hops: list[Target] = []
            self._expand(target, hops, {target.alias})
            if len(self._chains) >= _MAX_CACHED:
                self._chains.clear()
            found = self._chains[target] = tuple(hops)
        return found

    def _expand(self, target: Target, hops: list[Target], aliases: set[str]) -> None:
        for backend in (target.backend, *self.config.backends[target.backend].fallback):
            hop = target if backend == target.backend else replace(target, backend=backend)
            if all((h.alias, h.backend, h.model) != (hop.alias, hop.backend, hop.model) for h in hops):
                hops.append(hop)
        alias = self.config.models.get(target.alias)
        for name in alias.fallback if alias is not None else ():
            if name not in aliases:
                aliases.add(name)
                self._expand(self.target(name), hops, aliases)


def _refused(last: BudgetError, tried: list[tuple[str, str]]) -> BudgetError:
    """The refusal when no alias of the downgrade chain fits: the last one's, naming every alias tried."""
    if len(tried) < 2:
        return last
    chain = " → ".join(alias for alias, _ in tried)
    return BudgetError(f"{last} (no alias of the downgrade chain fits: {chain})", scope=last.scope, limit=last.limit)


def fallback_reason(exc: BaseException, *, started: bool) -> str | None:
    """Why a failed hop hands the call to the next one (``circuit_open``, ``retries_exhausted``), or None."""
    if started:  # a client holds the start of this answer: it cannot come from another backend
        return None
    if isinstance(exc, CircuitOpenError):
        return "circuit_open"
    if isinstance(exc, RetryableError):  # 408/409/429/5xx/529, connection errors, timeouts, malformed answers
        return "retries_exhausted"
    return None


def explain(table: RoutingTable, facts: Facts, decision: Decision) -> list[str]:
    """Why ``decision`` was made, one line a step, for ``coordinator route``."""
    lines = []
    for index, rule in enumerate(table.rules):
        if index == decision.rule:
            lines.append(f"{rule.label(index)} matches: alias {rule.alias}")
            break
        lines.append(f"{rule.label(index)} does not match: {'; '.join(rule.misses(facts))}")
    if decision.rule is None:
        passed = decision.requested not in table.config.models
        lines.append(f"no rule matched: the requested model {decision.requested!r} is kept"
                     + (" (not an alias: passed through to the default alias's backend)" if passed else ""))
    for alias, why in decision.downgraded:
        lines.append(f"budget: {alias} does not fit ({why}); its downgrade is tried")
    hops = table.chain(decision.target)
    lines.append("fallback chain: " + " → ".join(f"{h.alias} ({h.backend}: {h.model})" for h in hops))
    return lines
