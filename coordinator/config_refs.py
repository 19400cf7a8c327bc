"""Names in fleet.toml that point at other tables: each must exist, and downgrade links must not loop.

``load_config`` calls ``check_references`` once the file has parsed; every broken
name is a ``ConfigError`` naming the file, the line and the key (``routing[2].alias``)
and the fix. ``rule_line`` finds the line of a key inside the n-th ``[[routing]]``
table, which a plain key search cannot (every rule has an ``alias``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError
from .validation import did_you_mean, header_lines, key_line

if TYPE_CHECKING:
    from .config import FleetConfig

_RULE_KEY = re.compile(r"^routing\[(\d+)\](?:\.(\w+))?")


def check_references(config: FleetConfig, path: Path, text: str = "") -> list[ConfigError]:
    """Every broken name: agents, backends, model aliases (fallback, downgrade) and routing rules."""
    problems: list[ConfigError] = []

    def broken(message: str, key: str) -> None:
        # Every rule has an `alias`: only a line tells two [[routing]] tables apart.
        line = rule_line(text, key) if key.startswith("routing[") else None
        problems.append(ConfigError(message, path=path, key=key, line=line))

    if config.fleet.default_agent not in config.agents:
        broken(f"agent {config.fleet.default_agent!r} is not defined; add [agents.{config.fleet.default_agent}]"
               f"{did_you_mean(config.fleet.default_agent, config.agents)}", "fleet.default_agent")
    for name, alias in config.models.items():
        if alias.backend not in config.backends:
            broken(f"backend {alias.backend!r} is not defined; add [backends.{alias.backend}]"
                   f"{did_you_mean(alias.backend, config.backends)}", f"models.{name}.backend")
        for other in alias.fallback:
            if other not in config.models:
                broken(_no_alias(other, config, "fallback alias"), f"models.{name}.fallback")
        if alias.downgrade is not None and alias.downgrade not in config.models:
            broken(_no_alias(alias.downgrade, config, "downgrade alias"), f"models.{name}.downgrade")
    for name, backend in config.backends.items():
        for other in backend.fallback:
            if other not in config.backends:
                broken(f"fallback backend {other!r} is not defined; add [backends.{other}]"
                       f"{did_you_mean(other, config.backends)}", f"backends.{name}.fallback")
    for name, agent in config.agents.items():
        if agent.kind == "command" and not agent.command:
            broken("a command agent needs command = [\"program\", \"arg\", ...]", f"agents.{name}.command")
    for loop in _downgrade_loops(config):
        broken(f"downgrade links loop ({' → '.join(loop)}); end the chain at an alias without downgrade",
               f"models.{loop[0]}.downgrade")
    for index, rule in enumerate(config.routing):
        if rule.alias not in config.models:
            broken(_no_alias(rule.alias, config, "alias"), f"routing[{index}].alias")
        for agent_name in rule.agent:
            if agent_name not in config.agents:
                broken(f"agent {agent_name!r} is not defined; add [agents.{agent_name}] or use one of: "
                       f"{', '.join(config.agents)}", f"routing[{index}].agent")
    return problems


def _no_alias(name: str, config: FleetConfig, what: str) -> str:
    return (f"{what} {name!r} is not defined; add it under [models] (`{name} = {{ backend = \"...\", "
            f"model = \"...\" }}`){did_you_mean(name, config.models)}")


def _downgrade_loops(config: FleetConfig) -> list[list[str]]:
    """Each cycle of downgrade links once, starting from its first alias in file order."""
    loops, seen = [], set()
    for start in config.models:
        path, name = [], start
        while name is not None and name in config.models and name not in path and name not in seen:
            path.append(name)
            name = config.models[name].downgrade
        seen.update(path)
        if name is not None and name in path:
            loops.append(path[path.index(name):] + [name])
    return loops


def rule_line(text: str, key: str) -> int | None:
    """The line of ``routing[N].leaf`` in ``text``: the leaf's line inside the N-th ``[[routing]]``, else its header."""
    match = _RULE_KEY.match(key)
    if not match or not text:
        return None
    headers = header_lines(text)
    starts = [line for line, header in headers if header.replace(" ", "") == "[[routing]]"]
    index = int(match.group(1))
    if index >= len(starts):
        return None
    after = [line for line, _ in headers if line > starts[index]]
    end = after[0] - 1 if after else None
    leaf = match.group(2)
    return (key_line(text, leaf, start=starts[index], end=end) if leaf else None) or starts[index]
