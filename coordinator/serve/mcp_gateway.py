"""What the MCP server asks of the fleet's running gateway: ``infer``, and the reload after ``configure``.

The gateway is found as every command finds it, from ``gateway.json`` (its url and
the fleet token, its process alive). ``infer`` is an ordinary ``POST /v1/messages``
under the fleet token, so it is deduplicated and cached like any request (the
answer's ``x-coordinator-dedup`` says how it was served) and accounted to
"unassigned". Only the fleet token is sent, and only to the gateway on loopback:
provider keys stay in the gateway. No gateway, or one that does not answer, is
``NoGatewayError`` (as for ``coordinator ui``); a gateway's error answer is
``BackendError``: each one line.
"""

from __future__ import annotations

from typing import Any

from ..config import FleetConfig
from ..errors import BackendError, NoGatewayError
from ..gateway.client import GatewayInfo, read_gateway

INFER_TIMEOUT_S = 600.0
ANTHROPIC_VERSION = "2023-06-01"


def infer(config: FleetConfig, prompt: str, *, system: str | None, model: str | None,
          max_tokens: int) -> dict[str, Any]:
    """One non-streaming Messages call through the gateway: the answer's text, model, stop reason, usage, dedup."""
    info = read_gateway(config)
    if info is None:
        raise NoGatewayError(config.root)
    body: dict[str, Any] = {"model": model or "default", "max_tokens": max_tokens,
                            "messages": [{"role": "user", "content": prompt}]}
    if system:
        body["system"] = system
    response = _post(config, info, "/v1/messages", body, INFER_TIMEOUT_S)
    data = _json(response)
    if response.status_code != 200:
        raise BackendError(f"the gateway answered {response.status_code}: {_message(data, response)}",
                           backend="gateway")
    text = "".join(block.get("text", "") for block in data.get("content") or [] if block.get("type") == "text")
    return {"text": text, "model": data.get("model"), "stop_reason": data.get("stop_reason"),
            "usage": data.get("usage") or {}, "dedup": response.headers.get("x-coordinator-dedup")}


def reload(config: FleetConfig) -> dict[str, Any]:
    """Ask a running gateway to reload fleet.toml: ``{"status", "message", ...}``, never an error (the file is written).

    A reload answers ``{"reloaded", "generation", "changed", "restart_needed"}``
    (docs/gateway.md, "Reload"); those are passed on. The gateway's own watcher may
    have taken the new file already, and then ``changed`` is empty.
    """
    info = read_gateway(config)
    if info is None:
        return {"status": "no_gateway", "message": "no gateway is running; the next one starts with this fleet.toml"}
    try:
        status, data = info.reload()
    except OSError as exc:
        return {"status": "unreachable",
                "message": f"fleet.toml is written, but {NoGatewayError(config.root, info.url, str(exc))}"}
    if status == 404:  # a gateway without live reload: it reads the file from disk
        return {"status": "on_disk", "message": "fleet.toml is written; the gateway picks it up from disk"}
    if status == 200:
        restart = [str(key) for key in data.get("restart_needed") or []]
        later = f"; {', '.join(restart)} take effect when the gateway restarts" if restart else ""
        return {"status": "reloaded", "message": f"the gateway reloaded fleet.toml; in-flight requests finish on "
                                                 f"the old config{later}",
                "generation": data.get("generation"), "changed": [str(key) for key in data.get("changed") or []],
                "restart_needed": restart}
    error = data.get("error")
    message = str(error.get("message")) if isinstance(error, dict) and error.get("message") else f"HTTP {status}"
    return {"status": "refused", "message": f"fleet.toml is written, but the gateway kept its old config: {message}"}


def _post(config: FleetConfig, info: GatewayInfo, path: str, body: dict[str, Any], timeout_s: float) -> Any:
    import httpx  # noqa: PLC0415  (only infer and configure talk to the gateway)

    headers = {"authorization": f"Bearer {info.token}", "anthropic-version": ANTHROPIC_VERSION}
    try:
        # trust_env off: a proxy from the environment must never see the fleet token.
        with httpx.Client(trust_env=False, timeout=timeout_s) as client:
            return client.post(info.url + path, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise NoGatewayError(config.root, info.url, f"{type(exc).__name__}: {exc}") from exc


def _json(response: Any) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _message(data: dict[str, Any], response: Any) -> str:
    """The error's message, from the Anthropic or the task API's error JSON, else the start of the body."""
    error = data.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:300]
    return response.text[:300] or response.reason_phrase
