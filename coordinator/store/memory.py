"""An in-process store for fast tests, in the spirit of httpx's ``MockTransport``.

It keeps claims, records and events in dicts under a thread lock and passes the
same contract suite as the file store (``tests/store_contract.py``). It serves
one process only, so ``open_store`` never picks it for a fleet.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any

from ..clock import REAL_CLOCK, Clock
from .base import Claim, Record
from .locked import LockedStore


class MemoryStore(LockedStore):
    """State in memory; every read returns a copy, as a file or network store would."""

    def __init__(self, clock: Clock = REAL_CLOCK) -> None:
        super().__init__(clock)
        self._mutex = threading.RLock()
        self.claims: dict[str, Claim] = {}
        self.records: dict[str, Record] = {}
        self.events: list[dict[str, Any]] = []
        self.agents: dict[str, dict[str, Any]] = {}
        self.paused = False

    def _lock(self) -> threading.RLock:
        return self._mutex

    def _put_claim(self, claim: Claim) -> None:
        self.claims[claim.task] = copy.deepcopy(claim)

    def _drop_claim(self, task_id: str) -> None:
        self.claims.pop(task_id, None)

    def _put_record(self, record: Record) -> None:
        self.records[record.id] = copy.deepcopy(record)

    def _put_event(self, event: dict[str, Any]) -> None:
        self.events.append({k: str(v) if k == "state" else v for k, v in event.items()})

    def _put_paused(self, paused: bool) -> None:
        self.paused = paused

    def is_paused(self) -> bool:
        return self.paused

    def read_claim(self, task_id: str) -> Claim | None:
        return copy.deepcopy(self.claims.get(task_id))

    def list_claims(self) -> list[Claim]:
        return [copy.deepcopy(self.claims[k]) for k in sorted(self.claims)]

    def read_record(self, task_id: str) -> Record | None:
        return copy.deepcopy(self.records.get(task_id))

    def iter_records(self) -> Iterator[Record]:
        return iter([copy.deepcopy(r) for r in self.records.values()])

    def read_events(self, cursor: int = 0) -> tuple[list[dict[str, Any]], int]:
        with self._mutex:
            return [dict(e) for e in self.events[cursor:]], len(self.events)

    def event_cursor(self) -> int:
        return len(self.events)

    def write_agent(self, agent_id: str, status: dict[str, Any]) -> None:
        self.agents[agent_id] = copy.deepcopy(status)

    def read_agent(self, agent_id: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.agents.get(agent_id))

    def read_agents(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(self.agents[k]) for k in sorted(self.agents)]
