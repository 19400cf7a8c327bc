"""Replies, stream chunks and flight errors as bytes for Redis, and back, unchanged.

A reply is one JSON line of metadata (status, the headers returned to clients, mode,
usage, model, and the length of each event when the events travel with it) followed
by the payload: the body, or the events back to back. Event bounds are kept because
a finished stream is folded into a body (and cached) event by event. Errors travel
by kind with the fields ``apierrors.from_exception`` reads, so a follower's clients
get the same status, headers and bytes as the leader's. Nothing here holds a
provider key: headers are the ones returned to clients, errors were redacted by
the pipeline before the flight failed.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import (BackendError, BudgetError, CircuitOpenError, FatalBackendError, RetryableError,
                       StreamBrokenError)
from ..dedup import Reply
from ..dialects import Usage


def pack_events(events: list[bytes]) -> dict[str, bytes]:
    """Stream fields for a batch of events: their lengths and their bytes."""
    return {"l": ",".join(str(len(e)) for e in events).encode(), "d": b"".join(events)}


def unpack_events(fields: dict[bytes, bytes]) -> list[bytes]:
    """The events of a batch written by ``pack_events``."""
    data, events, at = fields[b"d"], [], 0
    for size in map(int, fields[b"l"].split(b",")):
        events.append(data[at:at + size])
        at += size
    return events


def pack_reply(reply: Reply, *, with_events: bool = True) -> bytes:
    """A reply (its events too, unless ``with_events`` is off: a stream's final entry) as bytes."""
    usage = reply.usage
    meta: dict[str, Any] = {"status": reply.status, "headers": reply.headers, "stream": reply.stream,
                            "model": reply.model, "usage": [usage.input_tokens, usage.output_tokens,
                                                            usage.cache_write_tokens, usage.cache_read_tokens]}
    payload = reply.body or b""
    if reply.stream and with_events:
        meta["lengths"] = [len(e) for e in reply.events]
        payload = b"".join(reply.events)
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + payload


def unpack_reply(blob: bytes, events: list[bytes] | None = None) -> Reply:
    """The reply ``pack_reply`` wrote; ``events`` are a stream's, when they travelled apart."""
    head, _, payload = blob.partition(b"\n")
    meta = json.loads(head)
    reply = Reply(int(meta["status"]), dict(meta["headers"]), bool(meta["stream"]), model=meta.get("model", ""),
                  usage=Usage(*meta["usage"]))
    if not reply.stream:
        reply.body = payload
    elif events is not None:
        reply.events = events
    else:
        at = 0
        for size in meta.get("lengths", []):
            reply.events.append(payload[at:at + size])
            at += size
    return reply


def pack_error(exc: BaseException) -> bytes:
    """A flight's final error, by kind, with what its API error is made of."""
    fields: dict[str, Any] = {"message": str(exc)}
    if isinstance(exc, CircuitOpenError):
        fields.update(kind="circuit", retry_after_s=exc.retry_after_s)
    elif isinstance(exc, RetryableError):
        fields.update(kind="retryable", status=exc.status, retry_after_s=exc.retry_after_s)
    elif isinstance(exc, FatalBackendError):
        fields.update(kind="fatal", status=exc.status, body=None if exc.body is None else exc.body.decode("latin-1"))
    elif isinstance(exc, BudgetError):
        fields.update(kind="budget", scope=exc.scope, limit=exc.limit)
    elif isinstance(exc, StreamBrokenError):
        fields.update(kind="broken")
    else:
        fields.update(kind="other", message=f"{type(exc).__name__}: {exc}" if not isinstance(exc, BackendError)
                      else str(exc))
    return json.dumps(fields, separators=(",", ":")).encode()


def unpack_error(blob: bytes) -> Exception:
    """An exception that ``from_exception`` turns into the same API error as the leader's."""
    fields = json.loads(blob)
    kind, message = fields["kind"], fields["message"]
    if kind == "circuit":
        return CircuitOpenError(message, retry_after_s=fields["retry_after_s"])
    if kind == "retryable":
        return RetryableError(message, status=fields["status"], retry_after_s=fields["retry_after_s"])
    if kind == "fatal":
        body = fields.get("body")
        return FatalBackendError(message, status=fields["status"],
                                 body=None if body is None else body.encode("latin-1"))
    if kind == "budget":
        return BudgetError(message, scope=fields["scope"], limit=fields["limit"])
    if kind == "broken":
        return StreamBrokenError(message, reported=True)
    return BackendError(message)
