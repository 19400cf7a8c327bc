"""The embedded default store: one folder of small JSON files (docs/architecture.md, "State on disk").

Claims are ``claims/<id>.json``, records ``records/<id>.json``, heartbeats
``agents/<agent>.json``, and the event feed ``events.jsonl``. Operations run
under ``queue.lock``, a ``filelock.FileLock``: an ``flock(2)`` lock, which the
kernel frees when its holder dies, so the lock itself can never go stale.
Every file is written atomically (``atomic.py``), so a reader sees the old or the
new version, never half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..atomic import PRIVATE_DIR, PRIVATE_FILE, read_json, write_json_atomic
from ..errors import StateError
from ..clock import REAL_CLOCK, Clock
from .base import Claim, Record, claim_from, record_from
from .locked import LockedStore

# How often a waiter re-tries queue.lock. The critical sections are well under a
# millisecond, so the default 50 ms poll would dominate claim latency.
LOCK_POLL_S = 0.0005


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OS failure to write ``path`` (disk full, read-only) into a one-line ``StateError``."""
    try:
        yield
    except OSError as exc:
        raise StateError(path, exc) from exc


class FileStore(LockedStore):
    """State as files under ``state_dir``; safe across processes on one host."""

    def __init__(self, state_dir: Path, clock: Clock = REAL_CLOCK) -> None:
        super().__init__(clock)
        self.root = state_dir
        self.claims_dir = state_dir / "claims"
        self.records_dir = state_dir / "records"
        self.agents_dir = state_dir / "agents"
        self.events_path = state_dir / "events.jsonl"
        self.paused_path = state_dir / "paused"
        for folder in (state_dir, self.claims_dir, self.records_dir, self.agents_dir):
            with writing(folder):
                folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        self._file_lock = FileLock(state_dir / "queue.lock", poll_interval=LOCK_POLL_S, mode=PRIVATE_FILE)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with writing(self._file_lock.lock_file):  # a read-only state dir cannot even hold the lock
            self._file_lock.acquire()
        try:
            yield
        finally:
            self._file_lock.release()

    def _put_claim(self, claim: Claim) -> None:
        path = self.claims_dir / f"{claim.task}.json"
        with writing(path):
            write_json_atomic(path, claim.to_json(), mode=PRIVATE_FILE)

    def _drop_claim(self, task_id: str) -> None:
        try:
            (self.claims_dir / f"{task_id}.json").unlink()
        except FileNotFoundError:
            pass

    def _put_record(self, record: Record) -> None:
        path = self.records_dir / f"{record.id}.json"
        with writing(path):
            write_json_atomic(path, record.to_json(), mode=PRIVATE_FILE)

    def _put_event(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"), default=str) + "\n"
        # One write() on an O_APPEND descriptor: concurrent appenders never interleave.
        with writing(self.events_path):
            fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)

    def _put_paused(self, paused: bool) -> None:
        with writing(self.paused_path):
            if paused:
                self.paused_path.touch(mode=PRIVATE_FILE)
            else:
                self.paused_path.unlink(missing_ok=True)

    def is_paused(self) -> bool:
        return self.paused_path.exists()

    def read_claim(self, task_id: str) -> Claim | None:
        return claim_from(read_json(self.claims_dir / f"{task_id}.json"))

    def list_claims(self) -> list[Claim]:
        names = sorted(n for n in os.listdir(self.claims_dir) if n.endswith(".json") and not n.startswith("."))
        claims = (claim_from(read_json(self.claims_dir / n)) for n in names)
        return [c for c in claims if c is not None]

    def read_record(self, task_id: str) -> Record | None:
        return record_from(read_json(self.records_dir / f"{task_id}.json"))

    def iter_records(self) -> Iterator[Record]:
        with os.scandir(self.records_dir) as entries:
            for entry in entries:
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    record = record_from(read_json(Path(entry.path)))
                    if record is not None:
                        yield record

    def read_events(self, cursor: int = 0) -> tuple[list[dict[str, Any]], int]:
        try:
            with open(self.events_path, "rb") as fh:
                fh.seek(cursor)
                data = fh.read()
        except FileNotFoundError:
            return [], cursor
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        events = []
        for line in data[:end].splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a torn line from a crashed writer carries nothing we can act on
        return events, cursor + end

    def event_cursor(self) -> int:
        try:
            return self.events_path.stat().st_size
        except FileNotFoundError:
            return 0

    def write_agent(self, agent_id: str, status: dict[str, Any]) -> None:
        path = self.agents_dir / f"{agent_id}.json"
        with writing(path):
            write_json_atomic(path, status, mode=PRIVATE_FILE)

    def read_agent(self, agent_id: str) -> dict[str, Any] | None:
        data = read_json(self.agents_dir / f"{agent_id}.json")
        return data if isinstance(data, dict) else None

    def read_agents(self) -> list[dict[str, Any]]:
        names = sorted(n for n in os.listdir(self.agents_dir) if n.endswith(".json") and not n.startswith("."))
        found = (self.read_agent(name[:-5]) for name in names)
        return [data for data in found if data is not None]
