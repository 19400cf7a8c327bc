"""Gateway tokens: one fleet token, and signed per-task tokens that describe themselves.

A task token is ``cgt.<claims>.<signature>``: ``claims`` is base64url compact JSON
(task id, agent, priority, per-task budget, attempt, retry generation, and what
routing rules match on: the task's labels and its ``[agents.NAME]``) and ``signature`` is HMAC-SHA256 of
``claims`` keyed by the fleet token. The gateway therefore knows a request's task,
priority and budget from its token alone, with no lookup table, and nobody without
the fleet token can mint one. Comparisons use ``hmac.compare_digest``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

FLEET_PREFIX = "cgf-"
TASK_PREFIX = "cgt."
# Domain separation: a signature over task claims can never be reused elsewhere.
_SIGNING_CONTEXT = b"coordinator-task-token-v1."


@dataclass(frozen=True)
class TokenClaims:
    """What a valid token says: its task (None for the fleet token), agent, priority, budget."""

    task_id: str | None = None
    agent: str | None = None
    priority: int = 2
    max_usd: float | None = None
    max_tokens: int | None = None
    attempt: int = 1  # the task's attempt: a retried attempt must not be served a cached answer
    generation: int = 0  # raised by `coordinator retry`: the task's budget starts afresh
    agent_name: str | None = None  # the task's [agents.NAME], for routing rules
    labels: frozenset[str] = frozenset()  # the task's labels, for routing rules


FLEET_CLAIMS = TokenClaims()


def new_fleet_token() -> str:
    """A fresh random fleet token (256 bits)."""
    return FLEET_PREFIX + secrets.token_urlsafe(32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(fleet_token: str, payload: str) -> str:
    mac = hmac.new(fleet_token.encode(), _SIGNING_CONTEXT + payload.encode("ascii"), hashlib.sha256)
    return _b64(mac.digest())


def task_token(fleet_token: str, task_id: str, *, agent: str | None = None, priority: int = 2,
               max_usd: float | None = None, max_tokens: int | None = None, attempt: int = 1,
               generation: int = 0, agent_name: str | None = None, labels: list[str] | None = None) -> str:
    """A token for one task, signed with the fleet token; it carries the task's claims."""
    claims = {"t": task_id, "a": agent, "p": int(priority), "u": max_usd, "k": max_tokens,
              "n": attempt if attempt != 1 else None, "g": generation or None, "r": agent_name,
              "l": sorted(labels) if labels else None}
    data = {k: v for k, v in claims.items() if v is not None}
    payload = _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())
    return f"{TASK_PREFIX}{payload}.{_sign(fleet_token, payload)}"


def read_token(fleet_token: str, token: str) -> TokenClaims | None:
    """The claims of ``token``, or None when it is not the fleet token nor signed by it."""
    if not token:
        return None
    if hmac.compare_digest(token.encode(), fleet_token.encode()):
        return FLEET_CLAIMS
    if not token.startswith(TASK_PREFIX) or token.count(".") != 2:
        return None
    _, payload, signature = token.split(".")
    if not hmac.compare_digest(signature.encode(), _sign(fleet_token, payload).encode()):
        return None
    return _parse_claims(payload)


def _parse_claims(payload: str) -> TokenClaims | None:
    try:
        data = json.loads(_unb64(payload))
        task_id = data["t"]
        if not isinstance(task_id, str) or not task_id:
            return None
        return TokenClaims(task_id=task_id, agent=data.get("a"), priority=int(data.get("p", 2)),
                           max_usd=data.get("u"), max_tokens=data.get("k"), attempt=int(data.get("n", 1)),
                           generation=int(data.get("g", 0)), agent_name=data.get("r"),
                           labels=frozenset(map(str, data.get("l") or ())))
    except (ValueError, KeyError, TypeError, binascii.Error):
        # Signed by us, so this is only reachable if a future format changes; reject.
        return None
