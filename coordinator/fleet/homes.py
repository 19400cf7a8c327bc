"""Agent homes: each command agent process gets a Claude Code config folder of its own.

Parallel ``claude -p`` sessions sharing one ``~/.claude.json`` corrupt it (none
writes it atomically), so every agent process gets ``CLAUDE_CONFIG_DIR`` under
the state dir, kept across its tasks. It is seeded with the user's
``settings.json`` only: not their history, and not their credentials, because
the gateway token is the credential. ``own_config_dir = false`` on an agent, an
explicit ``CLAUDE_CONFIG_DIR`` in its ``env``, or a sandbox (which has a home of
its own) turns it off.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from ..atomic import PRIVATE_DIR
from ..config import AgentConfig, FleetConfig

SEEDED = ("settings.json",)


def config_dir_env(config: FleetConfig, agent_id: str, agent: AgentConfig, env: Mapping[str, str]) -> dict[str, str]:
    """``{"CLAUDE_CONFIG_DIR": ...}`` for a command agent that should have its own, else {}."""
    if agent.kind != "command" or not agent.own_config_dir or agent.sandbox != "none" \
            or "CLAUDE_CONFIG_DIR" in agent.env:
        return {}
    folder = config.state_dir / "claude-config" / agent_id
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        seed(folder, env)
    return {"CLAUDE_CONFIG_DIR": str(folder.resolve())}


def seed(folder: Path, env: Mapping[str, str]) -> None:
    """Copy the user's settings (never history or credentials) into a new config folder."""
    source = Path(env["CLAUDE_CONFIG_DIR"]) if env.get("CLAUDE_CONFIG_DIR") else \
        Path(env.get("HOME", "/nonexistent")) / ".claude"
    for name in SEEDED:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
