"""The routing decision and its config: rules, downgrades, fallback chains, and their one-line errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.config import load_config
from coordinator.errors import (BudgetError, CircuitOpenError, ConfigError, FatalBackendError, MalformedEventError,
                                RetryableError, StreamBrokenError)
from coordinator.gateway.routing import Facts, RoutingTable, fallback_reason
from tests.routing_support import CHEAP, STRONG, routing_toml

BACKENDS = {"default": {}, "spare": {}, "local": {"fallback": ["spare"]}}
MODELS = {"default": {"backend": "default", "model": "claude-sonnet-4-6"},
          "strong": {"backend": "default", "model": "claude-opus-4-5", "downgrade": "cheap", "fallback": ["spare"],
                     **STRONG},
          "cheap": {"backend": "default", "model": "claude-haiku-4-5", "downgrade": "tiny", **CHEAP},
          "tiny": {"backend": "local", "model": "tiny-1", "input_usd_per_mtok": 0.0, "output_usd_per_mtok": 0.0},
          "spare": {"backend": "spare", "model": "claude-sonnet-4-6", "fallback": ["strong"]}}
RULES = [{"name": "docs", "labels": ["docs", "small"], "alias": "cheap"},
         {"name": "urgent", "priority": ["critical", "high"], "alias": "strong"},
         {"agent": "claude", "alias": "tiny"},
         {"name": "short", "max_input_tokens": 500, "priority": "low", "alias": "tiny"}]


@pytest.fixture
def table(make_fleet: Callable[..., Path]) -> RoutingTable:
    toml = routing_toml(BACKENDS, MODELS, RULES, {"agents.claude": {"kind": "command", "command": ["claude"]}})
    return RoutingTable(load_config(make_fleet(toml)))


@pytest.mark.parametrize(("labels", "priority", "agent", "tokens", "requested", "alias", "rule"), [
    ({"docs", "small", "x"}, 2, "llm", 9000, "default", "cheap", 0),      # every listed label present
    ({"docs"}, 0, "llm", 10, "default", "strong", 1),                     # one label short: the next rule
    (set(), 1, "claude", 10, "default", "strong", 1),                     # first match wins over the agent rule
    (set(), 2, "claude", 10, "strong", "tiny", 2),                        # the rule overrides the requested model
    (set(), 3, "llm", 500, "default", "tiny", 3),                         # at the size limit
    (set(), 3, "llm", 501, "default", "default", None),                   # past it: no rule, the model is kept
    (set(), 2, None, 10, "claude-opus-4-6", "default", None),             # a passed-through name: alias default
    (set(), 2, "llm", 10, "spare", "spare", None),
], ids=["labels", "labels-short", "priority-first", "agent", "size", "size-past", "pass-through", "no-rule"])
def test_rules_pick_the_alias_of_the_first_match(table, labels, priority, agent, tokens, requested, alias,
                                                 rule) -> None:
    facts = Facts(frozenset(labels), priority, agent, tokens)
    decision = table.decide(facts, requested)
    assert (decision.target.alias, decision.rule) == (alias, rule)
    for index, compiled in enumerate(table.rules):  # the fast match and its explanation agree
        assert compiled.matches(facts) == (not compiled.misses(facts)), index
    if requested == "claude-opus-4-6":
        assert decision.target.model == "claude-opus-4-6" and decision.target.backend == "default"


def test_downgrades_follow_the_links_until_the_budget_fits(table) -> None:
    facts = Facts(input_tokens=100)
    budget = {"strong": False, "cheap": False, "tiny": True}
    decision = table.decide(facts, "strong", lambda t: None if budget[t.alias] else BudgetError(
        f"{t.alias} too dear", scope="task", limit=1.0))
    assert decision.target.alias == "tiny" and decision.how == "downgrade"
    assert [alias for alias, _ in decision.downgraded] == ["strong", "cheap"]
    budget["tiny"] = False
    with pytest.raises(BudgetError) as info:
        table.decide(facts, "strong", lambda t: None if budget[t.alias] else BudgetError(
            f"{t.alias} too dear", scope="task", limit=1.0))
    assert "tiny too dear" in str(info.value) and "strong → cheap → tiny" in str(info.value)
    assert table.decide(facts, "strong", lambda t: None).how == "requested"


def test_a_chain_is_the_alias_its_backends_fallbacks_then_its_fallback_aliases_each_once(table) -> None:
    hops = [(h.alias, h.backend, h.model) for h in table.chain(table.target("strong"))]
    assert hops == [("strong", "default", "claude-opus-4-5"), ("spare", "spare", "claude-sonnet-4-6")]
    hops = [(h.alias, h.backend) for h in table.chain(table.target("tiny"))]
    assert hops == [("tiny", "local"), ("tiny", "spare")]  # the backend's own fallback, same model
    hops = [h.alias for h in table.chain(table.target("spare"))]
    assert hops == ["spare", "strong"]  # strong's fallback back to spare is not taken twice


@pytest.mark.parametrize(("exc", "started", "reason"), [
    (RetryableError("529", status=529), False, "retries_exhausted"),
    (RetryableError("429", status=429), False, "retries_exhausted"),
    (MalformedEventError("bad"), False, "retries_exhausted"),
    (CircuitOpenError("open"), False, "circuit_open"),
    (FatalBackendError("400", status=400), False, None),
    (StreamBrokenError("cut"), True, None),
    (RetryableError("502", status=502), True, None),  # a client holds the first bytes: never switch
])
def test_when_a_call_falls_back(exc, started, reason) -> None:
    assert fallback_reason(exc, started=started) == reason


@pytest.mark.parametrize(("rules", "models", "needle"), [
    ([{"alias": "nope"}], {}, "routing[0].alias: alias 'nope' is not defined"),
    ([{"alias": "default"}, {"labels": ["x"], "alias": "defualt"}], {}, "routing[1].alias: alias 'defualt' is "
                                                                       "not defined; add it under [models]"),
    ([{"agent": "ghost", "alias": "default"}], {}, "routing[0].agent: agent 'ghost' is not defined"),
    ([{"priority": "urgent", "alias": "default"}], {}, "routing[0].priority: must be an integer >= 0 or one of"),
    ([{"lables": ["x"], "alias": "default"}], {}, "routing[0].lables: unknown key; remove it or check its "
                                                  "spelling (did you mean 'labels'?)"),
    ([{"labels": ["x"]}], {}, "routing[0].alias: required key is missing"),
    ([], {"a": {"downgrade": "b"}, "b": {"downgrade": "a"}}, "models.a.downgrade: downgrade links loop (a → b → a)"),
    ([], {"a": {"fallback": ["zz"]}}, "models.a.fallback: fallback alias 'zz' is not defined"),
])
def test_each_bad_rule_or_alias_is_one_line_naming_the_file_and_key(make_fleet, rules, models, needle) -> None:
    root = make_fleet(routing_toml({"default": {}}, {"default": {}, **models}, rules))
    with pytest.raises(ConfigError) as info:
        load_config(root)
    problems = getattr(info.value, "problems", [info.value])
    found = [str(p) for p in problems if needle in str(p)]
    assert found and all("\n" not in line for line in found), [str(p) for p in problems]
    assert found[0].startswith(str(root / "fleet.toml"))
    if rules and needle.startswith("routing[1]"):  # the line of the second [[routing]] table's alias
        lines = (root / "fleet.toml").read_text().splitlines()
        assert lines[problems[0].line - 1].startswith("alias = \"defualt\"")
