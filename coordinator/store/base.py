"""The store contract: one atomic operation per state change, plus reads and the event feed.

A store holds claims (leases), task records, the event feed and agent
heartbeats. It is operation-shaped (docs/architecture.md, "The store seam"): ``claim``, ``renew``, ``finish``,
``release``, ``reclaim``, ``cancel``, ``retry`` (and ``repair`` for crash leftovers)
are each one atomic call that validates before it writes, and writes the state
change together with its event. Callers never take a store-wide lock, so a
store whose operations are server-side scripts (Redis, later) fits the same seam
as the file store, whose operations run under its own ``queue.lock``.

Fencing lives in the operations: ``renew``, ``finish`` and ``release`` name the
claim they act for and are refused with ``ClaimLostError`` (and a ``fenced``
event) unless that claim is still the live one at its epoch. Which operation may
move a task from which state is ``tasks.model.TRANSITIONS``; when a claim is
stale is the claim book's policy (``queue.claims``). ``open_store(config)`` in
this package is the only constructor callers use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..tasks.model import State, Task


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
    generation: int = 0  # the record's retry generation when claimed (budgets start afresh with it)
    # A networked store's random fence beside the epoch: it tells a retried call (outcome
    # unknown) by this very claim from a stale one. The file store has none.
    token: str | None = None
    base: str | None = None  # workspaces: the target's commit this claim's worktree started from
    branch: str | None = None  # workspaces: the claim's branch

    def to_json(self) -> dict[str, Any]:
        """The claim as stored (without a token when the store uses none, as the file store's JSON)."""
        data = asdict(self)
        if data["token"] is None:
            del data["token"]
        return data


@dataclass
class Record:
    """Everything the coordinator knows about one task's progress."""

    id: str
    state: State = State.PENDING
    attempts: int = 0
    epoch: int = 0
    agent: str | None = None
    claimed_at: float | None = None
    finished_at: float | None = None
    last_error: str | None = None
    file_hash: str | None = None
    generation: int = 0  # raised by every retry: budgets and caches start afresh with it
    retry_at: float | None = None  # a failed attempt's task is not claimed again before this (backoff)
    usage: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # Workspaces (docs/workspaces.md): where the last attempt worked and what landed.
    base: str | None = None  # the target's commit the worktree started from
    branch: str | None = None
    tip: str | None = None  # the branch's last commit
    landed: str | None = None  # the commit the target moved to
    conflicts: int = 0  # conflicts and red gates, counted apart from attempts

    def __post_init__(self) -> None:
        self.state = State(self.state)  # from JSON it arrives as a string

    def to_json(self) -> dict[str, Any]:
        """The record as stored (the state as its plain string)."""
        data = asdict(self)
        data["state"] = str(self.state)
        return data


WORKSPACE_FIELDS = ("base", "branch", "tip", "landed")


@dataclass(frozen=True)
class Holder:
    """Who is claiming: an agent id and its process identity (pid plus start time, host)."""

    agent: str
    pid: int
    pid_started_at: float
    host: str


def claim_from(data: Any) -> Claim | None:
    """A Claim from stored JSON, or None if it is not one."""
    if not isinstance(data, dict):
        return None
    try:
        return Claim(**data)
    except TypeError:
        return None


def record_from(data: Any) -> Record | None:
    """A Record from stored JSON, or None if it is not one."""
    if not isinstance(data, dict):
        return None
    try:
        return Record(**data)
    except (TypeError, ValueError):
        return None


class Store(ABC):
    """The storage contract every backend implements (file, memory, Redis)."""

    # -- operations: each one atomic, each writes its event -------------------

    @abstractmethod
    def claim(self, task_id: str, holder: Holder, *, lease_s: float) -> Claim | None:
        """Claim a pending, unclaimed task (epoch + 1); None if it is not claimable now."""

    @abstractmethod
    def renew(self, claim: Claim, *, child_pid: int | None = None,
              child_started_at: float | None = None) -> Claim:
        """Extend the lease (and note the runner's process); ``ClaimLostError`` if it is no longer ours."""

    @abstractmethod
    def finish(self, claim: Claim, *, ok: bool, max_attempts: int, error: str | None = None,
               usage: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
               backoff_s: float = 0.0) -> Record:
        """Record an attempt's outcome: done, pending for another attempt, or failed; fenced.

        A task put back for another attempt is not claimed again for ``backoff_s``.
        """

    @abstractmethod
    def release(self, claim: Claim, *, reason: str) -> Record:
        """Give the task back uncounted (the holder is stopping); fenced."""

    @abstractmethod
    def land(self, claim: Claim, move_ref: Callable[[], str | None], *,
             extra: dict[str, Any] | None = None) -> Record | None:
        """Run ``move_ref`` while ``claim`` is live at its epoch and no other landing runs; fenced.

        ``move_ref`` moves the target branch and returns the commit it landed, or None
        if it did not (the target moved, the landing is held). A landed task is done in
        the same atomic step, so a crash can never land it twice; a claim that is not
        live is refused (``ClaimLostError``, a ``land_fenced`` event) before
        ``move_ref`` is called. No reclaim, cancel or other landing interleaves with it.
        """

    @abstractmethod
    def requeue(self, claim: Claim, *, kind: str, reason: str, max_conflicts: int,
                extra: dict[str, Any] | None = None) -> Record:
        """A conflict or red gate (``kind``): pending again, attempt not spent, ``conflicts`` + 1; fenced.

        Past ``max_conflicts`` the task fails instead.
        """

    @abstractmethod
    def reclaim(self, claim: Claim, *, reason: str, max_attempts: int, counted: bool = True) -> Record | None:
        """Take over a claim judged stale, if it is still exactly ``claim``; None if it moved on.

        ``counted`` spends the attempt (a dead or hung holder); uncounted is a
        release on the holder's behalf (the fleet stopping). A claim left behind
        by a crash (its record not running at its epoch) is removed.
        """

    @abstractmethod
    def cancel(self, task_id: str) -> tuple[Record, Claim | None]:
        """Cancel a pending or running task; returns the record and the claim it had, if any."""

    @abstractmethod
    def retry(self, task_id: str) -> Record:
        """Put a finished task back to pending with fresh attempts."""

    @abstractmethod
    def repair(self, task_ids: Iterable[str]) -> list[str]:
        """Put back to pending, uncounted, any of ``task_ids`` left running with no claim; their ids."""

    @abstractmethod
    def set_paused(self, paused: bool) -> bool:
        """Pause (agents claim nothing; running tasks finish) or resume the fleet; whether it changed."""

    @abstractmethod
    def is_paused(self) -> bool:
        """Whether the fleet is paused."""

    # -- notes, reads and the feed --------------------------------------------

    @abstractmethod
    def now(self) -> float:
        """The store's wall time, which leases are measured in."""

    @abstractmethod
    def append_event(self, kind: str, **fields: Any) -> None:
        """Add a note that changes no state (an agent started, a process exited) to the feed."""

    @abstractmethod
    def read_events(self, cursor: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Events after ``cursor`` and the cursor to pass next time."""

    @abstractmethod
    def event_cursor(self) -> int:
        """The feed's current end, to start reading from."""

    @abstractmethod
    def read_claim(self, task_id: str) -> Claim | None:
        """The live claim on ``task_id``, if any."""

    @abstractmethod
    def list_claims(self) -> list[Claim]:
        """Every live claim, in task id order."""

    @abstractmethod
    def read_record(self, task_id: str) -> Record | None:
        """The record of ``task_id``; None means never touched (pending)."""

    @abstractmethod
    def iter_records(self) -> Iterator[Record]:
        """Every record (O(n): for reports and start-up, never the claim path)."""

    @abstractmethod
    def write_agent(self, agent_id: str, status: dict[str, Any]) -> None:
        """Publish an agent's heartbeat and status."""

    @abstractmethod
    def read_agent(self, agent_id: str) -> dict[str, Any] | None:
        """One agent's last published status."""

    @abstractmethod
    def read_agents(self) -> list[dict[str, Any]]:
        """Every agent's last published status, by agent id."""

    # -- task files across hosts (DESIGN §13) -----------------------------------

    # Whether hosts that do not share a disk share this store (Redis): then each host
    # publishes its task files' texts and reads the others' (queue/taskfiles.py).
    shares_task_files = False

    def share_task_files(self, files: Mapping[str, tuple[str, int, str]]) -> int:
        """Publish task files (source → (sha256, mtime_ns, text)), idempotent by hash; how many changed."""
        return 0

    def read_task_files(self, known_version: int | None) -> tuple[int, dict[str, tuple[str, int, str]] | None]:
        """(version, every shared file), or (version, None) when nothing changed since ``known_version``."""
        return 0, None


class ReadySet(ABC):
    """A store that keeps the ready queue itself (Redis, DESIGN §13): agents claim with one ``claim_next``.

    Every process that reads task files to claim or enqueue loads their definitions
    (``queue/taskfiles.py``); the store then keeps which tasks are ready as states
    change. A store without it (file, memory) leaves the pick to each agent's view,
    which claims by id (``queue/picking.py``).
    """

    @abstractmethod
    def claim_next(self, holder: Holder, *, lease_s: float) -> Claim | None:
        """Claim the best ready task (priority, then run order); None if none is ready or the fleet is paused."""

    @abstractmethod
    def load_ready(self, tasks: Sequence[Task], gone: Sequence[str], *, version: int) -> bool:
        """Load task definitions (priority, run order, dependencies) for ``claim_next``, idempotently.

        ``gone`` (ids whose definitions are no longer valid) are dropped only while ``version`` is
        still the shared task files' version; whether they were (or there were none).
        """

    @abstractmethod
    def ready_counts(self) -> tuple[int, int, int]:
        """Tasks ready, backing off, and claimed, by the store's own ready set (one round trip)."""


def ready_set(store: Store) -> ReadySet | None:
    """``store`` as a ``ReadySet`` when it keeps one, else None."""
    return store if isinstance(store, ReadySet) else None
