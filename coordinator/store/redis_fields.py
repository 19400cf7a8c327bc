"""How a task's record and claim are laid out in its Redis hash, and back.

One hash per task holds both: the record's fields under their own names and the
claim's under ``c.``. Scripts compare and update single fields, so nothing in Lua
re-encodes JSON (its cjson prints numbers with 14 digits and turns ``[]`` into
``{}``): times stay the decimal strings they were written as, and ``usage`` and
``history`` are JSON text the scripts only splice. ``Record`` and ``Claim`` come
back with the same shapes as the file store's JSON, so reports are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..tasks.model import Task
from .base import WORKSPACE_FIELDS, Claim, Record, claim_from, record_from

CLAIM_PREFIX = "c."
RECORD_INTS = frozenset({"attempts", "epoch", "generation", "conflicts"})
RECORD_FLOATS = frozenset({"claimed_at", "finished_at", "retry_at"})
RECORD_JSON = frozenset({"usage", "history"})
RECORD_TEXT = frozenset({"state", "agent", "last_error", "file_hash", "base", "branch", "tip", "landed"})
CLAIM_INTS = frozenset({"pid", "epoch", "attempt", "child_pid", "generation"})
CLAIM_FLOATS = frozenset({"pid_started_at", "claimed_at", "renewed_at", "lease_s", "child_started_at"})
CLAIM_TEXT = frozenset({"agent", "host", "token", "base", "branch"})


def split(task_id: str, flat: list[str] | dict[str, str]) -> tuple[Record | None, Claim | None]:
    """The record and claim in one task hash (HGETALL, as a dict or a script's flat list)."""
    fields = flat if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2], strict=True))
    record: dict[str, Any] = {"id": task_id}
    claim: dict[str, Any] = {"task": task_id}
    for name, value in fields.items():
        if name.startswith(CLAIM_PREFIX):
            key = name[len(CLAIM_PREFIX):]
            claim[key] = _typed(key, value, CLAIM_INTS, CLAIM_FLOATS, frozenset())
        elif name in RECORD_TEXT or name in RECORD_INTS or name in RECORD_FLOATS or name in RECORD_JSON:
            record[name] = _typed(name, value, RECORD_INTS, RECORD_FLOATS, RECORD_JSON)
    return (record_from(record) if "state" in record else None,
            claim_from(claim) if "epoch" in claim else None)


def _typed(name: str, value: str, ints: frozenset[str], floats: frozenset[str], texts: frozenset[str]) -> Any:
    if name in ints:
        return int(value)
    if name in floats:
        return float(value)
    if name in texts:
        return json.loads(value)
    return value


def record_fields(record: Record) -> dict[str, str]:
    """A record as hash fields (None fields left out)."""
    out = {}
    for name, value in record.to_json().items():
        if value is None or name == "id":
            continue
        out[name] = json.dumps(value) if name in RECORD_JSON else _text(value)
    return out


def claim_fields(claim: Claim) -> dict[str, str]:
    """A claim as ``c.`` hash fields (None fields left out)."""
    return {CLAIM_PREFIX + name: _text(value) for name, value in claim.to_json().items()
            if value is not None and name != "task"}


def _text(value: Any) -> str:
    """A scalar as the string a script reads back exactly (``repr`` of a float round-trips)."""
    return repr(float(value)) if isinstance(value, float) else str(value)


ALL_RECORD_FIELDS = tuple(sorted(RECORD_TEXT | RECORD_INTS | RECORD_FLOATS | RECORD_JSON))
ALL_CLAIM_FIELDS = tuple(CLAIM_PREFIX + name for name in sorted(CLAIM_INTS | CLAIM_FLOATS | CLAIM_TEXT))


def ready_row(task: Task) -> list[Any]:
    """A task's definition as ``lua/load.lua`` takes it: id, signature, priority, rank, dependencies.

    The rank orders tasks of one priority as ``Task.sort_key`` does, byte for byte:
    the first-seen time zero-padded, the source file as hex (so no character of a
    path sorts differently from Python's string order), the position, then the id
    (last, after a space; ids have none), which the claim script reads back.
    """
    priority, seen_ns, source, index, task_id = task.sort_key()
    rank = f"{max(seen_ns, 0):020d} {source.encode().hex()} {index:08d} {task_id}"
    deps = " ".join(task.depends_on)
    signature = hashlib.sha256(f"{priority}\n{rank}\n{deps}".encode()).hexdigest()[:16]
    return [task_id, signature, priority, rank, deps]


def landing_fields(extra: dict[str, Any] | None, *, file_hash: bool = True) -> dict[str, Any]:
    """The workspace fields (base, branch, tip, landed) and file hash an attempt reported."""
    extra = extra or {}
    fields = {"workspace": {key: extra[key] for key in WORKSPACE_FIELDS if extra.get(key) is not None}}
    if file_hash:
        fields["file_hash"] = extra.get("file_hash")
    return fields


def history_entry(claim: Claim, outcome: str, error: str | None, extra: dict[str, Any] | None) -> dict[str, str]:
    """A history entry as JSON halves; the script puts its own ``finished_at`` between them."""
    head = json.dumps({"attempt": claim.attempt, "agent": claim.agent, "epoch": claim.epoch,
                       "started_at": claim.claimed_at})
    tail = json.dumps({"outcome": outcome, "error": error, **(extra or {})}, default=str)
    return {"head": head[:-1], "tail": tail[1:]}
