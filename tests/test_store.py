"""The store contract (``tests/store_contract.py``) run against every store, plus what is the file store's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.clock import ManualClock
from coordinator.queue.claims import current_holder
from coordinator.store.base import Record
from coordinator.store.file import FileStore
from coordinator.store.memory import MemoryStore
from coordinator.tasks.model import State
from tests.redis_support import RedisServer, redis_missing, redis_server  # noqa: F401  (fixture)
from tests.store_contract import LEASE_S, StoreContract

if redis_missing() is None:
    from coordinator.store.redis import RedisStore
    from coordinator.store.redis_setup import connect


class TestFileStore(StoreContract):
    """The embedded default: JSON files under a state folder, decisions under queue.lock."""

    store: FileStore

    def make_store(self, clock: ManualClock) -> FileStore:
        return FileStore(self.tmp_path / "state", clock=clock)

    def test_record_state_is_a_plain_string_on_disk(self) -> None:
        claim = self.claim()
        path = self.store.records_dir / "t1.json"
        assert json.loads(path.read_text())["state"] == "running"
        self.store.finish(claim, ok=True, max_attempts=3)
        on_disk = json.loads(path.read_text())
        assert on_disk["state"] == "done" and type(on_disk["state"]) is str
        record = self.store.read_record("t1")
        assert record.state is State.DONE and record.to_json() == on_disk
        path.write_text(json.dumps({**on_disk, "state": "failed"}))  # a hand edit, as a plain string
        assert self.store.read_record("t1").state is State.FAILED
        path.write_text(json.dumps({**on_disk, "state": "exploded"}))
        assert self.store.read_record("t1") is None  # not a record: never half-trusted

    def test_state_files_are_json_and_atomic(self) -> None:
        self.claim()
        assert json.loads((self.store.claims_dir / "t1.json").read_text())["epoch"] == 1
        self.store.write_agent("a1", {"id": "a1"})
        leftovers = list(self.store.root.rglob("*.tmp"))
        assert leftovers == []
        names = sorted(p.relative_to(self.store.root).as_posix() for p in self.store.root.rglob("*") if p.is_file())
        assert names == ["agents/a1.json", "claims/t1.json", "events.jsonl", "queue.lock", "records/t1.json"]

    def test_two_handles_on_one_folder_share_the_claims(self) -> None:
        other = FileStore(self.store.root, clock=self.clock)
        first = self.claim()
        assert other.claim("t1", current_holder("a2"), lease_s=LEASE_S) is None
        assert other.read_claim("t1") == first
        other.release(other.read_claim("t1"), reason="on the holder's behalf")
        assert self.store.read_record("t1") == Record(id="t1", state=State.PENDING, epoch=1, agent="a1",
                                                      claimed_at=first.claimed_at)

    def test_a_torn_last_event_line_is_left_for_the_next_read(self) -> None:
        self.claim()
        cursor = self.store.event_cursor()
        with open(self.store.events_path, "ab") as fh:
            fh.write(b'{"event":"half')
        new, end = self.store.read_events(cursor)
        assert new == [] and end == cursor


class TestMemoryStore(StoreContract):
    """The in-process test seam: the same contract, in dicts."""

    store: MemoryStore

    def make_store(self, clock: ManualClock) -> MemoryStore:
        return MemoryStore(clock=clock)


class TestRedisStore(StoreContract):
    """The store for fleets beyond one host: each operation one Lua script on a real redis-server."""

    store: RedisStore

    @pytest.fixture(autouse=True)
    def _fresh_store(self, tmp_path: Path, redis_server: RedisServer) -> None:
        redis_server.flush()
        self.server = redis_server
        self.tmp_path = tmp_path
        self.clock = ManualClock()
        self.store = self.make_store(self.clock)

    def make_store(self, clock: ManualClock) -> RedisStore:
        return connect(self.server.url, fleet="contract", marker=self.tmp_path / "incarnation", clock=clock)
