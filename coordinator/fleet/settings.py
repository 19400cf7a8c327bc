"""An agent's settings, reread from fleet.toml before each claim when the file changed (DESIGN §12).

What a claim runs with comes from the ``[agents.*]`` tables and ``[fleet]
default_agent`` (command, system prompt, model, timeout, env, sandbox): those are
taken from the new file. The rest (the state folder and store, lease and
heartbeat) stays what the process started with; changing it needs a restart. A
file with errors is refused with its one-line error on stderr (once per
interval) and the settings read before stay, as the gateway does (``gateway/reload.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import FleetConfig, load_config
from ..config_watch import ConfigWatch
from ..errors import ConfigError


class AgentSettings:
    """Watches fleet.toml for one agent process."""

    def __init__(self, config: FleetConfig, warn: Callable[[str], None]) -> None:
        self.watch = ConfigWatch(config.config_path)
        self.warn = warn

    def refresh(self, config: FleetConfig) -> FleetConfig:
        """``config`` with the agent tables of the file as it is now, if it changed and is valid."""
        if not self.watch.changed(wait=True):
            return config
        try:
            fresh = load_config(config.root, content=self.watch.content)
        except ConfigError as exc:
            self.warn(f"{exc}; fleet.toml refused, keeping the agent settings read before")
            return config
        fleet = config.fleet.model_copy(update={"default_agent": fresh.fleet.default_agent})
        return config.model_copy(update={"agents": fresh.agents, "fleet": fleet})
