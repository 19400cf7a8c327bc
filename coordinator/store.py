"""The state contract (claims, records, events, agents) and its file backend.

``Store`` is the one seam a Redis store for multi-host fleets will implement
later (DESIGN §9). The claim protocol in ``claims.py`` is written only against
this surface: a mutual-exclusion ``lock()`` around short decisions, reads and
atomic writes of claims and records, an append-only event feed with offsets,
and agent heartbeats.

The file backend keeps everything under ``state_dir`` (DESIGN §2). Every file is
written atomically (temp file + ``os.replace``), so a reader sees the old or the
new version, never half of one, and a ``kill -9`` at any point leaves a state the
protocol can recover from. No fsync: the protocol survives process death, which
is the failure it is built for; power loss is out of scope.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

# How often a waiter re-tries queue.lock. The critical sections are well under a
# millisecond, so the default 50 ms poll would dominate claim latency.
LOCK_POLL_S = 0.0005


@dataclass
class Claim:
    """A live lease on one task, held by one agent process."""

    task: str
    agent: str
    pid: int
    pid_started_at: float
    host: str
    claimed_at: float
    renewed_at: float
    lease_s: float
    epoch: int
    attempt: int
    child_pid: int | None = None  # the runner's process group, killed if the claim is taken over
    child_started_at: float | None = None


@dataclass
class Record:
    """Everything the coordinator knows about one task's progress."""

    id: str
    state: str = "pending"
    attempts: int = 0
    epoch: int = 0
    agent: str | None = None
    claimed_at: float | None = None
    finished_at: float | None = None
    last_error: str | None = None
    file_hash: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def write_json_atomic(path: Path, data: Any, *, mode: int | None = None) -> None:
    """Write ``data`` as JSON to ``path`` so readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(Path(tmp))
        raise


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it does not exist or is torn/garbled."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return None


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class Store(ABC):
    """The storage contract every backend (file now, Redis later) implements."""

    @abstractmethod
    def lock(self) -> AbstractContextManager[Any]:
        """Exclusive section for claim/reclaim/complete decisions."""

    @abstractmethod
    def read_claim(self, task_id: str) -> Claim | None:
        """The live claim on ``task_id``, if any."""

    @abstractmethod
    def write_claim(self, claim: Claim) -> None:
        """Create or replace the claim on ``claim.task``."""

    @abstractmethod
    def delete_claim(self, task_id: str) -> None:
        """Remove the claim on ``task_id`` (no error when absent)."""

    @abstractmethod
    def list_claims(self) -> list[Claim]:
        """Every live claim, in task id order."""

    @abstractmethod
    def read_record(self, task_id: str) -> Record | None:
        """The record of ``task_id``; None means never touched (pending)."""

    @abstractmethod
    def write_record(self, record: Record) -> None:
        """Replace the record of ``record.id``."""

    @abstractmethod
    def iter_records(self) -> Iterator[Record]:
        """Every record (O(n): for status and start-up, never the claim path)."""

    @abstractmethod
    def append_event(self, kind: str, **fields: Any) -> None:
        """Append one state change to the audit log."""

    @abstractmethod
    def read_events(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Events after ``offset`` and the offset to pass next time."""

    @abstractmethod
    def event_offset(self) -> int:
        """The feed's current end, to start reading from."""

    @abstractmethod
    def write_agent(self, agent_id: str, status: dict[str, Any]) -> None:
        """Publish an agent's heartbeat and status."""

    @abstractmethod
    def read_agents(self) -> list[dict[str, Any]]:
        """Every agent's last published status."""


class FileStore(Store):
    """The embedded default: one folder of small JSON files (DESIGN §2)."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.claims_dir = state_dir / "claims"
        self.records_dir = state_dir / "records"
        self.runs_dir = state_dir / "runs"
        self.agents_dir = state_dir / "agents"
        self.events_path = state_dir / "events.jsonl"
        for folder in (self.claims_dir, self.records_dir, self.runs_dir, self.agents_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(state_dir / "queue.lock", poll_interval=LOCK_POLL_S)

    def lock(self) -> FileLock:
        return self._lock

    def read_claim(self, task_id: str) -> Claim | None:
        data = read_json(self.claims_dir / f"{task_id}.json")
        return _claim_from(data)

    def write_claim(self, claim: Claim) -> None:
        write_json_atomic(self.claims_dir / f"{claim.task}.json", asdict(claim))

    def delete_claim(self, task_id: str) -> None:
        _unlink_quietly(self.claims_dir / f"{task_id}.json")

    def list_claims(self) -> list[Claim]:
        names = sorted(n for n in os.listdir(self.claims_dir) if n.endswith(".json"))
        claims = (_claim_from(read_json(self.claims_dir / n)) for n in names)
        return [c for c in claims if c is not None]

    def read_record(self, task_id: str) -> Record | None:
        return _record_from(read_json(self.records_dir / f"{task_id}.json"))

    def write_record(self, record: Record) -> None:
        write_json_atomic(self.records_dir / f"{record.id}.json", asdict(record))

    def iter_records(self) -> Iterator[Record]:
        with os.scandir(self.records_dir) as entries:
            for entry in entries:
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    record = _record_from(read_json(Path(entry.path)))
                    if record is not None:
                        yield record

    def append_event(self, kind: str, **fields: Any) -> None:
        event = {"ts": round(time.time(), 6), "event": kind, **fields}
        line = json.dumps(event, separators=(",", ":"), default=str) + "\n"
        # One write() on an O_APPEND descriptor: concurrent appenders never interleave.
        fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)

    def read_events(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        try:
            with open(self.events_path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        events = []
        for line in data[:end].splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a torn line from a crashed writer carries nothing we can act on
        return events, offset + end

    def event_offset(self) -> int:
        try:
            return self.events_path.stat().st_size
        except FileNotFoundError:
            return 0

    def write_agent(self, agent_id: str, status: dict[str, Any]) -> None:
        write_json_atomic(self.agents_dir / f"{agent_id}.json", status)

    def read_agents(self) -> list[dict[str, Any]]:
        out = []
        for name in sorted(os.listdir(self.agents_dir)):
            if name.endswith(".json") and not name.startswith("."):
                data = read_json(self.agents_dir / name)
                if isinstance(data, dict):
                    out.append(data)
        return out

    def run_dir(self, task_id: str, epoch: int) -> Path:
        """The folder holding one claim's output and logs, ``runs/<id>/<epoch>/`` (created on demand)."""
        path = self.runs_dir / task_id / str(epoch)
        path.mkdir(parents=True, exist_ok=True)
        return path


def _claim_from(data: Any) -> Claim | None:
    if not isinstance(data, dict):
        return None
    try:
        return Claim(**data)
    except TypeError:
        return None


def _record_from(data: Any) -> Record | None:
    if not isinstance(data, dict):
        return None
    try:
        return Record(**data)
    except TypeError:
        return None
