"""The Redis store (DESIGN §13): every state change one Lua script, for fleets beyond one host.

Each operation of the contract is a script in ``lua/`` (after ``lua/prelude.lua``),
registered once per store. A script checks the fleet's ``incarnation``, takes
"now" from the server's ``TIME`` (or from a test clock), validates everything
before its first write, then writes the change and its event to the ``events``
stream together. Redis runs a script alone, so no caller takes a lock.

Fencing is the epoch plus a random claim token kept on the ``Claim``: a call
retried after its outcome was lost (the connection dropped after the script ran)
finds its own token and returns the same answer instead of being fenced.

Keys share the hash tag ``{fleet:<name>}``, so two fleets share a Redis and a
fleet's keys stay on one Cluster slot: ``task:<id>`` hashes (record fields, claim
fields under ``c.``, the loaded definition under ``d.``; ``redis_fields``), ``leases``
(sorted by expiry), ``records`` (ids with a record), ``events`` (ids ``0-<n>``: ``n``
is the cursor), ``agents`` (heartbeats), ``paused``, ``landing`` and ``incarnation``.
The ready set (``ReadySet``): ``ready`` (by priority, then rank), ``delayed`` (by
``retry_at``), ``dependents:<id>`` and ``claimed`` (each agent's last claim token);
see docs/architecture.md. ``redis_setup.connect`` builds one after the start-up checks.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

from ..clock import Clock, poll
from ..errors import ClaimLostError, ConfigError, IncarnationError, StoreError, StoreUnavailableError
from ..tasks.model import TRANSITIONS, State, Task, after_attempt, transition
from .base import Claim, Holder, ReadySet, Record, Store
from .redis_fields import (ALL_CLAIM_FIELDS, ALL_RECORD_FIELDS, claim_fields, history_entry, landing_fields, ready_row,
                           record_fields, split)

try:
    import redis
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ConfigError("the Redis store needs redis-py; run `pip install 'coordinator[redis]'`",
                      key="fleet.state") from exc

SCRIPTS = ("claim", "renew", "finish", "release", "requeue", "reclaim", "cancel", "retry", "repair",
           "land_begin", "land_end", "set_paused", "note", "share_files", "load", "claim_next")
PARTS = {"claim_next": ("pick", "claim")}  # a script made of several bodies, run in this order
LOAD_BATCH = 1000  # task definitions per load script call
# How often an operation re-asks while a landing holds its task (a landing moves one git ref).
LANDING_POLL_S = 0.005
LANDING_WAIT_S = 600.0
READ_BATCH = 500


class Keys:
    """The fleet's key names, all under one hash tag."""

    def __init__(self, fleet: str) -> None:
        self.prefix = f"coordinator:{{fleet:{fleet}}}:"
        self.incarnation, self.events, self.leases = (self.prefix + k for k in ("incarnation", "events", "leases"))
        self.paused, self.landing, self.records = (self.prefix + k for k in ("paused", "landing", "records"))
        self.ready, self.delayed, self.claimed = (self.prefix + k for k in ("ready", "delayed", "claimed"))
        self.agents = self.prefix + "agents"
        self.files = [self.prefix + k for k in ("files:hash", "files:text", "files:version")]

    def task(self, task_id: str) -> str:
        """The hash of one task's record and claim."""
        return f"{self.prefix}task:{task_id}"

    def common(self) -> list[str]:
        """The KEYS every script takes, in prelude.lua's order."""
        return [self.incarnation, self.events, self.leases, self.paused, self.landing, self.records,
                self.ready, self.delayed, self.claimed]


def script_source(name: str) -> str:
    """A script as registered: the shared prelude, then its own body (or bodies, ``PARTS``)."""
    folder = resources.files(__package__) / "lua"
    return "\n".join((folder / f"{part}.lua").read_text("utf-8") for part in ("prelude", *PARTS.get(name, (name,))))


class RedisStore(Store, ReadySet):
    """The contract over one Redis primary with AOF on (see ``redis_setup`` for the checks)."""

    def __init__(self, client: redis.Redis, *, keys: Keys, incarnation: str, url: str,
                 clock: Clock | None = None) -> None:
        self.client = client
        self.keys = keys
        self.incarnation = incarnation
        self.url = url
        self.clock = clock  # None: the server's TIME, shared by every host
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPTS}

    # -- calls ------------------------------------------------------------------

    @contextmanager
    def _talking(self) -> Iterator[None]:
        """Translate redis-py's failures into the store's errors, once, here."""
        try:
            yield
        except redis.AuthenticationError as exc:
            raise StoreError(f"the state store at {self.url} refused the password; put the right one in the "
                             "variable [fleet] state_password_env names", url=self.url) from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailableError(self.url, str(exc) or type(exc).__name__) from exc
        except redis.ResponseError as exc:
            text = str(exc)
            if text.startswith("INCARNATION"):
                found = text.split()[1] if len(text.split()) > 1 else "missing"
                raise IncarnationError(self.url, self.incarnation, None if found == "missing" else found) from exc
            raise StoreError(f"the state store at {self.url} refused an operation: {text}", url=self.url) from exc

    def _run(self, name: str, task_id: str | None, args: dict[str, Any]) -> Any:
        return self._call(name, self.keys.common() + ([self.keys.task(task_id)] if task_id is not None else []), args)

    def _call(self, name: str, keys: list[str], args: dict[str, Any]) -> Any:
        now = "" if self.clock is None else repr(round(self.clock.wall(), 6))
        with self._talking():
            return self._scripts[name](keys=keys, args=[self.incarnation, now, json.dumps(args)])

    def _waiting(self, name: str, task_id: str, args: dict[str, Any]) -> Any:
        """Run a script that answers "busy" while a landing holds the task, until it does not."""
        for _ in poll(LANDING_POLL_S, timeout_s=LANDING_WAIT_S):
            reply = self._run(name, task_id, args)
            if reply[0] != "busy":
                return reply
        raise StoreError(f"a landing held task {task_id!r} for {LANDING_WAIT_S:.0f}s; check the agent landing it",
                         url=self.url)

    def _fenced(self, name: str, claim: Claim, action: str, args: dict[str, Any]) -> Any:
        reply = self._run(name, claim.task, {**_held(claim), **args})
        if reply[0] == "fenced":
            raise ClaimLostError(claim.task, claim.epoch, f"{action} refused, {reply[1]}")
        return reply

    # -- operations ---------------------------------------------------------------

    def now(self) -> float:
        if self.clock is not None:
            return self.clock.wall()
        with self._talking():
            seconds, micros = self.client.time()
        return seconds + micros / 1e6

    def append_event(self, kind: str, **fields: Any) -> None:
        self._run("note", None, {"kind": kind, "body": json.dumps(fields, default=str)})

    # -- task files across hosts ---------------------------------------------------

    shares_task_files = True

    def share_task_files(self, files: Mapping[str, tuple[str, int, str]]) -> int:
        rows = [[source, digest, str(mtime_ns), text] for source, (digest, mtime_ns, text) in files.items()]
        return int(self._call("share_files", self.keys.common() + self.keys.files, {"files": rows}))

    def read_task_files(self, known_version: int | None) -> tuple[int, dict[str, tuple[str, int, str]] | None]:
        hashes, texts, version_key = self.keys.files
        with self._talking():
            version = int(self.client.get(version_key) or 0)
            if version == known_version:
                return version, None
            with self.client.pipeline(transaction=True) as pipe:
                stamps, bodies, version = pipe.hgetall(hashes).hgetall(texts).get(version_key).execute()
        files = {}
        for source, stamp in stamps.items():
            digest, _, mtime_ns = stamp.partition(" ")
            if source in bodies:
                files[source] = (digest, int(mtime_ns or 0), bodies[source])
        return int(version or 0), files

    def claim(self, task_id: str, holder: Holder, *, lease_s: float) -> Claim | None:
        reply = self._run("claim", task_id, {"task": task_id, **_claiming(holder, lease_s)})
        return split(task_id, reply[1])[1] if reply[0] == "claimed" else None

    # -- the ready set (DESIGN §13): the server picks, so a claim is one round trip ----------

    def claim_next(self, holder: Holder, *, lease_s: float) -> Claim | None:
        reply = self._run("claim_next", None, {"task": None, **_claiming(holder, lease_s)})
        return split(reply[2], reply[1])[1] if reply[0] == "claimed" else None

    def load_ready(self, tasks: Sequence[Task], gone: Sequence[str], *, version: int) -> bool:
        rows = [ready_row(task) for task in tasks]
        dropped = not gone
        keys = self.keys.common() + [self.keys.files[2]]
        for start in range(0, max(len(rows), 1), LOAD_BATCH):
            args = {"tasks": rows[start:start + LOAD_BATCH], "gone": [] if dropped else list(gone),
                    "version": str(version)}
            reply = self._call("load", keys, args)
            dropped = dropped or int(reply[1]) > 0
        return dropped

    def ready_counts(self) -> tuple[int, int, int]:
        with self._talking(), self.client.pipeline(transaction=True) as pipe:
            ready, delayed, leased = pipe.zcard(self.keys.ready).zcard(self.keys.delayed).zcard(self.keys.leases).execute()
        return ready, delayed, leased

    def renew(self, claim: Claim, *, child_pid: int | None = None,
              child_started_at: float | None = None) -> Claim:
        reply = self._fenced("renew", claim, "renew", {
            "child_pid": child_pid, "child_started_at": None if child_started_at is None else _f(child_started_at),
            "base": claim.base, "branch": claim.branch})
        renewed = split(claim.task, reply[1])[1]
        assert renewed is not None  # the script just wrote it
        return renewed

    def finish(self, claim: Claim, *, ok: bool, max_attempts: int, error: str | None = None,
               usage: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
               backoff_s: float = 0.0) -> Record:
        state = transition("finish", claim.task, State.RUNNING, after_attempt(ok, claim.attempt, max_attempts))
        action = "done" if ok else "fail"
        reply = self._fenced("finish", claim, action, {
            "action": action, "attempt": claim.attempt, "to": state, "error": error, "backoff_s": _f(backoff_s),
            "kind": "retrying" if state == State.PENDING else str(state),
            "usage": json.dumps(usage) if usage else None, **landing_fields(extra),
            "entry": history_entry(claim, "done" if ok else "failed", error, extra)})
        return _record(claim.task, reply)

    def release(self, claim: Claim, *, reason: str) -> Record:
        transition("release", claim.task, State.RUNNING, State.PENDING)
        return _record(claim.task, self._fenced("release", claim, "release", {"reason": reason}))

    def land(self, claim: Claim, move_ref: Callable[[], str | None], *,
             extra: dict[str, Any] | None = None) -> Record | None:
        hold_ms = int(max(claim.lease_s, 1.0) * 2000)  # a lander that dies frees the lock by itself
        for _ in poll(LANDING_POLL_S, timeout_s=LANDING_WAIT_S):
            reply = self._run("land_begin", claim.task, {**_held(claim), "hold_ms": hold_ms})
            if reply[0] == "fenced":
                raise ClaimLostError(claim.task, claim.epoch, f"land refused, {reply[1]}")
            if reply[0] == "ok":
                break
        landed = None
        try:
            landed = move_ref()
        finally:
            reply = self._fenced("land_end", claim, "land", {
                "landed": landed, "attempt": claim.attempt, "to": State.DONE,
                **landing_fields({**(extra or {}), "landed": landed}),
                "entry": history_entry(claim, "landed", None, extra)})
        return None if landed is None else _record(claim.task, reply)

    def requeue(self, claim: Claim, *, kind: str, reason: str, max_conflicts: int,
                extra: dict[str, Any] | None = None) -> Record:
        reply = self._fenced("requeue", claim, kind, {
            "kind": kind, "reason": reason, "max_conflicts": max_conflicts, "attempt": claim.attempt,
            **landing_fields(extra, file_hash=False), "entry": history_entry(claim, kind, reason, extra)})
        return _record(claim.task, reply)

    def reclaim(self, claim: Claim, *, reason: str, max_attempts: int, counted: bool = True) -> Record | None:
        state = after_attempt(False, claim.attempt, max_attempts) if counted else State.PENDING
        transition("reclaim" if counted else "release", claim.task, State.RUNNING, state)
        error = f"claim reclaimed: agent {claim.agent} (pid {claim.pid}) {reason}"
        reply = self._waiting("reclaim", claim.task, {
            **_held(claim), "pid": claim.pid, "renewed_at": _f(claim.renewed_at), "child_pid": claim.child_pid,
            "counted": counted, "reason": reason, "attempt": claim.attempt, "to": state, "error": error,
            "entry": history_entry(claim, "reclaimed", error, None)})
        return None if reply[0] == "none" else _record(claim.task, reply)

    def cancel(self, task_id: str) -> tuple[Record, Claim | None]:
        reply = self._waiting("cancel", task_id, {"task": task_id, "from": _from("cancel"), "to": State.CANCELLED})
        if reply[0] == "state":
            transition("cancel", task_id, State(reply[1]), State.CANCELLED)  # raises, saying why
        return _record(task_id, reply), split(task_id, reply[2])[1]

    def retry(self, task_id: str) -> Record:
        reply = self._run("retry", task_id, {"task": task_id, "from": _from("retry"), "to": State.PENDING})
        if reply[0] == "state":
            transition("retry", task_id, State(reply[1]), State.PENDING)  # raises, saying why
        return _record(task_id, reply)

    def repair(self, task_ids: Iterable[str]) -> list[str]:
        args = {"from": _from("repair"), "to": State.PENDING}
        return [task_id for task_id in task_ids
                if self._waiting("repair", task_id, {**args, "task": task_id})[0] == "ok"]

    def set_paused(self, paused: bool) -> bool:
        return bool(self._run("set_paused", None, {"paused": paused}))

    def is_paused(self) -> bool:
        with self._talking():
            return bool(self.client.exists(self.keys.paused))

    def plant(self, *, claim: Claim | None = None, record: Record | None = None) -> None:
        """Write a claim or record as given, bypassing every rule (tests build crash leftovers with it)."""
        with self._talking(), self.client.pipeline(transaction=True) as pipe:
            if record is not None:
                pipe.hdel(self.keys.task(record.id), *ALL_RECORD_FIELDS)
                pipe.hset(self.keys.task(record.id), mapping=record_fields(record))
                pipe.sadd(self.keys.records, record.id)
            if claim is not None:
                pipe.hdel(self.keys.task(claim.task), *ALL_CLAIM_FIELDS)
                pipe.hset(self.keys.task(claim.task), mapping=claim_fields(claim))
                pipe.zadd(self.keys.leases, {claim.task: claim.renewed_at + claim.lease_s})
            pipe.execute()

    # -- reads and the feed ---------------------------------------------------------

    def read_claim(self, task_id: str) -> Claim | None:
        with self._talking():
            return split(task_id, self.client.hgetall(self.keys.task(task_id)))[1]

    def list_claims(self) -> list[Claim]:
        with self._talking():
            ids = sorted(self.client.zrange(self.keys.leases, 0, -1))
        found = (split(task_id, fields)[1] for task_id, fields in self._hashes(ids))
        return [claim for claim in found if claim is not None]

    def read_record(self, task_id: str) -> Record | None:
        with self._talking():
            return split(task_id, self.client.hgetall(self.keys.task(task_id)))[0]

    def iter_records(self) -> Iterator[Record]:
        with self._talking():
            ids = list(self.client.smembers(self.keys.records))
        for task_id, fields in self._hashes(ids):
            record = split(task_id, fields)[0]
            if record is not None:
                yield record

    def _hashes(self, ids: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
        """Each task hash of ``ids``, read in pipelined batches."""
        for start in range(0, len(ids), READ_BATCH):
            batch = ids[start:start + READ_BATCH]
            with self._talking(), self.client.pipeline(transaction=False) as pipe:
                for task_id in batch:
                    pipe.hgetall(self.keys.task(task_id))
                yield from zip(batch, pipe.execute(), strict=True)

    def read_events(self, cursor: int = 0) -> tuple[list[dict[str, Any]], int]:
        with self._talking():
            entries = self.client.xrange(self.keys.events, f"(0-{cursor}" if cursor else "-", "+")
        if not entries:
            return [], cursor
        return [json.loads(fields["e"]) for _, fields in entries], _seq(entries[-1][0])

    def event_cursor(self) -> int:
        with self._talking():
            last = self.client.xrevrange(self.keys.events, "+", "-", count=1)
        return _seq(last[0][0]) if last else 0

    def write_agent(self, agent_id: str, status: dict[str, Any]) -> None:
        with self._talking():
            self.client.hset(self.keys.agents, agent_id, json.dumps(status, default=str))

    def read_agent(self, agent_id: str) -> dict[str, Any] | None:
        with self._talking():
            data = self.client.hget(self.keys.agents, agent_id)
        return json.loads(data) if data else None

    def read_agents(self) -> list[dict[str, Any]]:
        with self._talking():
            found = self.client.hgetall(self.keys.agents)
        return [json.loads(found[name]) for name in sorted(found)]


def _f(value: float) -> str:
    """A number as the exact decimal string a script compares and stores."""
    return repr(float(value))


def _seq(stream_id: str) -> int:
    """The cursor of an event id ``0-<n>``."""
    return int(stream_id.split("-", 1)[1])


def _from(operation: str) -> list[str]:
    """The states ``operation`` may start from (``tasks.model.TRANSITIONS``), for a script to check."""
    return [str(state) for state in TRANSITIONS[operation]]


def _claiming(holder: Holder, lease_s: float) -> dict[str, Any]:
    """A claim's arguments: who claims, for how long, with a fresh token."""
    return {"agent": holder.agent, "pid": holder.pid, "pid_started_at": _f(holder.pid_started_at),
            "host": holder.host, "lease_s": _f(lease_s), "token": secrets.token_hex(8),
            "from": _from("claim"), "to": State.RUNNING}


def _held(claim: Claim) -> dict[str, Any]:
    """What fences a call: whose claim, at which epoch, with which token."""
    return {"task": claim.task, "agent": claim.agent, "epoch": claim.epoch, "token": claim.token}


def _record(task_id: str, reply: list[Any]) -> Record:
    record = split(task_id, reply[1])[0]
    assert record is not None  # every script that answers "ok" has written the record
    return record
