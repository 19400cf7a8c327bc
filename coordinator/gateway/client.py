"""What agents and ``status`` know of the running gateway, from ``gateway.json``.

Standard library only: an agent that runs commands must stay small (no HTTP
client stack imported), and ``status`` must start fast.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import read_json
from ..config import FleetConfig
from ..liveness import process_is_alive

STATS_TIMEOUT_S = 2.0
RELOAD_TIMEOUT_S = 30.0
RELOAD_PATH = "/v1/coordinator/config/reload"
# Every call here carries the fleet token to 127.0.0.1: never through a proxy named in the
# environment (urllib's default opener would send it to one unless no_proxy lists localhost).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
GATEWAY_FILE = "gateway.json"  # {"url", "pid", "token"} of the running gateway (mode 0600)
STATS_FILE = "gateway-stats.json"  # the counters a gateway saved last, for `status` when it is gone


def gateway_path(config: FleetConfig) -> Path:
    """Where the running gateway announces itself."""
    return config.state_dir / GATEWAY_FILE


def stats_path(config: FleetConfig) -> Path:
    """Where a gateway saves its counters."""
    return config.state_dir / STATS_FILE


@dataclass(frozen=True)
class GatewayInfo:
    """The running gateway's address and fleet token."""

    url: str
    pid: int
    token: str

    def task_token(self, task: Any, agent_id: str, *, attempt: int = 1, generation: int = 0,
                   agent_name: str | None = None) -> str:
        """A token naming ``task`` (its priority, budget, labels, agent, attempt, retry generation) for one attempt."""
        from .tokens import task_token  # noqa: PLC0415  (hmac only, but keep agents lean)

        return task_token(self.token, task.id, agent=agent_id, priority=task.priority,
                          max_usd=task.max_usd, max_tokens=task.max_tokens_budget, attempt=attempt,
                          generation=generation, agent_name=agent_name, labels=task.labels)

    def is_healthy(self) -> bool:
        """Whether the gateway answers its health check."""
        request = urllib.request.Request(self.url + "/healthz", headers={"x-api-key": self.token})
        try:
            with _DIRECT.open(request, timeout=STATS_TIMEOUT_S) as response:
                return response.status == 200
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def get_json(self, path: str) -> dict[str, Any] | None:
        """GET a gateway JSON endpoint with the fleet token; None when unreachable."""
        request = urllib.request.Request(self.url + path, headers={"x-api-key": self.token})
        try:
            with _DIRECT.open(request, timeout=STATS_TIMEOUT_S) as response:
                data = json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None
        return data if isinstance(data, dict) else None

    def task_usage(self, task_id: str) -> dict[str, Any] | None:
        """The gateway's accounting for one task, summed over its attempts."""
        return self.get_json(f"/v1/coordinator/usage/{task_id}")

    def stats(self) -> dict[str, Any] | None:
        """The gateway's fleet-wide counters."""
        return self.get_json("/v1/coordinator/stats")

    def reload(self) -> tuple[int, dict[str, Any]]:
        """Ask the gateway to re-read fleet.toml: (HTTP status, its JSON answer); OSError when it does not answer.

        ``coordinator reload`` and the MCP ``configure`` tool both call this.
        """
        request = urllib.request.Request(self.url + RELOAD_PATH, data=b"{}", method="POST",
                                         headers={"authorization": f"Bearer {self.token}",
                                                  "content-type": "application/json"})
        try:
            with _DIRECT.open(request, timeout=RELOAD_TIMEOUT_S) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            data = {}
        return status, data if isinstance(data, dict) else {}


def read_gateway(config: FleetConfig) -> GatewayInfo | None:
    """The gateway named in ``gateway.json`` if its process is still alive."""
    data = read_json(gateway_path(config))
    if not isinstance(data, dict):
        return None
    try:
        info = GatewayInfo(url=str(data["url"]), pid=int(data["pid"]), token=str(data["token"]))
    except (KeyError, TypeError, ValueError):
        return None
    if not process_is_alive(info.pid):
        return None
    return info
