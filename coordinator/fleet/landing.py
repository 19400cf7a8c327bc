"""One claim's workspace as the agent drives it: open, commit, then precheck → gate → land, or re-queue.

The agent makes four calls (``open``, ``commit`` before acceptance,
``integrate`` after a successful run, ``close`` always); the git steps are in
``worktrees.py`` and the fencing in the store's ``land`` (docs/workspaces.md).
A conflict or a red gate re-queues the task with ``conflict.md`` in its run
folder: the conflicted paths, what landed on them since the attempt's base, the
attempt's own diff and the gate output's tail, bounded, which the next attempt
receives (``carry_conflict``).

Each step's wall time is added up in ``steps_ms`` (``time.perf_counter``, nothing
else on the hot path) and written once, in the ``workspace_closed`` event, so
``scripts/bench_workspace.py`` measures what real agents did.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..clock import poll
from ..config import AgentConfig, FleetConfig
from ..errors import ClaimLostError, ConfigError, CoordinatorError, GitError
from ..liveness import HOST
from ..runners import RunResult
from ..store import Claim, Record, Store
from ..tasks import Task
from . import worktrees as wt
from .gitrepo import rev
from .workspace import runs_root

HELD_POLL_S = 0.25  # a held landing (dirty user checkout) is tried again this often
CONFLICT_BYTES = 16 * 1024  # what one conflict file may hold in all
Phase = Callable[[str, dict[str, Any]], None]


@dataclass
class Settled:
    """The outcome of integrating a run: a result, and the record if the store already wrote it."""

    result: RunResult
    record: Record | None = None
    lost: str | None = None  # the store refused the landing: this claim is no longer live


def open_workspace(config: FleetConfig, store: Store, task: Task, claim: Claim, agent: AgentConfig, *, run: Path,
                   env: dict[str, str], should_stop: Callable[[], str | None], on_phase: Phase
                   ) -> ClaimWorkspace | None:
    """The claim's new worktree, ready to run in; None when the agent works in the primary checkout."""
    if config.workspace.mode != "worktree" or agent.workspace == "shared":
        return None
    space = ClaimWorkspace(config, store, task, claim, run=run, on_phase=on_phase)
    try:
        error = space.open(env, should_stop)
    except CoordinatorError:
        space.close()
        raise
    if error is not None:
        space.close()
        raise CoordinatorError(error)
    return space


def require_one_host(config: FleetConfig, store: Store, now: float) -> None:
    """Worktree mode on a shared store: every live agent must be on this host (DESIGN §13).

    Landing moves a branch of a repository on this host; an agent on another host
    would land on a different repository. Landing across hosts through a shared
    remote is later work, so it is refused at start with its fix.
    """
    if config.workspace.mode != "worktree" or config.fleet.state == "file":
        return
    for agent in store.read_agents():
        alive = agent.get("state") != "stopped" and now - float(agent.get("heartbeat_at", 0)) <= config.fleet.lease_s
        if alive and agent.get("host") not in (None, HOST):
            raise ConfigError(f"[workspace] mode = \"worktree\" lands on a repository of one host, so with a "
                              f"shared state store every agent must run there; agent {agent.get('id')} runs on "
                              f"{agent.get('host')}. Run the agents on one host, or set mode = \"shared\"",
                              path=config.config_path, key="workspace.mode")


class ClaimWorkspace:
    """The worktree of one claim, from creation to landing or salvage."""

    def __init__(self, config: FleetConfig, store: Store, task: Task, claim: Claim, *, run: Path,
                 on_phase: Phase) -> None:
        self.config, self.store, self.task, self.claim, self.run = config, store, task, claim, run
        self.on_phase = on_phase
        self.ws: wt.Workspace | None = None
        self.landed = False
        self.moved = threading.Event()
        self.extra: dict[str, Any] = {}
        self.steps_ms: dict[str, float] = {}

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Add the wall time of the block to ``steps_ms[step]`` (a step may run more than once)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            self.steps_ms[step] = self.steps_ms.get(step, 0.0) + elapsed

    def open(self, env: dict[str, str], should_stop: Callable[[], str | None]) -> str | None:
        """Create the worktree, copy and run setup; None when ready, else why not."""
        with self.timed("create"):
            self.ws = wt.create(self.config, self.task.id, self.claim.epoch, agent=self.claim.agent)
        # On the claim from the start, so whoever finds it (status, a takeover) knows where it began.
        self.claim.base, self.claim.branch = self.ws.base, self.ws.branch
        self.store.renew(self.claim)
        with self.timed("setup"):
            return wt.run_setup(self.config, self.ws, env={**env, **self.env()}, log=self.run / "setup.log",
                                should_stop=should_stop)

    @property
    def path(self) -> Path:
        """The worktree's folder (the runner's root)."""
        assert self.ws is not None
        return self.ws.path

    def env(self) -> dict[str, str]:
        """What a runner in this worktree is told."""
        assert self.ws is not None
        return {"COORDINATOR_WORKTREE": str(self.ws.path), "COORDINATOR_BRANCH": self.ws.branch,
                "COORDINATOR_BASE": self.ws.base, "COORDINATOR_TASK_ID": self.task.id}

    def commit(self) -> str | None:
        """Commit what the runner left (hooks on) before acceptance runs; None, or why it failed."""
        assert self.ws is not None
        try:
            with self.timed("commit"):
                wt.commit_all(self.ws, f"{self.task.title} ({self.task.id})")
        except GitError as exc:
            return f"committing the task's changes failed: {exc}"
        return None

    def fields(self) -> dict[str, Any]:
        """The record's workspace fields for this attempt."""
        return self.ws.fields() if self.ws is not None else {}

    def settle(self, env: dict[str, str], should_stop: Callable[[], str | None],
               on_spawn: Callable[[int], None] | None, extra: dict[str, Any] | None = None) -> Settled:
        """``integrate``, with a refused landing and a git failure turned into the attempt's outcome."""
        try:
            return self.integrate(env, should_stop, on_spawn, extra)
        except ClaimLostError as exc:  # a stale claim never lands: the store refused and logged it
            return Settled(RunResult(False, str(exc)), lost=str(exc))
        except CoordinatorError as exc:
            return Settled(RunResult(False, f"landing failed: {exc}"))

    def integrate(self, env: dict[str, str], should_stop: Callable[[], str | None],
                  on_spawn: Callable[[int], None] | None, extra: dict[str, Any] | None = None) -> Settled:
        """Precheck, gate and land, again each time the target moves; re-queue on a conflict or red gate."""
        assert self.ws is not None and self.ws.tip is not None
        if self.ws.tip == self.ws.base or self.config.workspace.land == "none":
            return Settled(RunResult(True))  # nothing to land, or branches are kept by design
        self.extra = extra or {}
        held: str | None = None
        for _ in poll(HELD_POLL_S, wake=self.moved):
            if reason := should_stop():
                return Settled(RunResult(False, f"stopped before landing: {reason}"))
            settled, why_held = self._try_once(env, should_stop, on_spawn)
            if settled is not None:
                return settled
            if why_held and why_held != held:
                self.store.append_event("landing", task=self.task.id, epoch=self.claim.epoch, held=why_held)
            held = why_held
        raise AssertionError("unreachable: poll without a timeout never ends")

    def _try_once(self, env: dict[str, str], should_stop: Callable[[], str | None],
                  on_spawn: Callable[[int], None] | None) -> tuple[Settled | None, str | None]:
        """One pass against the target as it is now: (settled, None), or (None, why held / None if moved)."""
        ws, target = self.ws, self.config.workspace.target
        assert ws is not None and ws.tip is not None
        with self.timed("precheck"):
            old = rev(ws.repo, f"refs/heads/{target}")
            assert old is not None, f"branch {target} is gone"
            merge = wt.precheck(ws.repo, old, ws.tip)
        if merge.conflicts:
            return self._requeue("conflict", f"merge conflict in {', '.join(merge.conflicts)}", merge, old, ""), None
        with self.timed("precheck"):
            commit = wt.candidate(self.config, ws.repo, merge, old, ws.tip,
                                  f"Land {self.task.id}: {self.task.title}")
        self.on_phase("gating", {"task": self.task.id})
        with self.timed("gate"):
            ok, tail = wt.gate(self.config, ws, commit, merge.tree, env={**env, **self.env()},
                               log=self.run / "gate.log", should_stop=should_stop, on_spawn=on_spawn)
        if not ok:
            return self._requeue("gate_failed", "a gate failed on the merged result", merge, old, tail), None
        self.on_phase("landing", {"task": self.task.id})
        self.store.append_event("landing", task=self.task.id, epoch=self.claim.epoch, candidate=commit)
        why: dict[str, str | None] = {"held": None}

        def move() -> str | None:
            landed, why["held"] = wt.move_target(ws.repo, target, commit, old)
            return landed

        with self.timed("land"):
            record = self.store.land(self.claim, move, extra={**self.extra, **self.fields()})
        if record is not None:
            self.landed = True
            return Settled(RunResult(True), record), None
        if why["held"]:
            self.on_phase("held", {"task": self.task.id, "reason": why["held"]})
        else:
            self.moved.set()  # the target moved: merge again at once
        return None, why["held"]

    def _requeue(self, kind: str, reason: str, merge: wt.Merge, target_commit: str, gate_tail: str) -> Settled:
        """Write the conflict context and give the task back (conflicts counted, attempts not)."""
        self.write_conflict(kind, reason, merge, target_commit, gate_tail)
        record = self.store.requeue(self.claim, kind=kind, reason=reason,
                                    max_conflicts=self.config.workspace.max_conflicts, extra=self.fields())
        return Settled(RunResult(False, reason), record)

    def write_conflict(self, kind: str, reason: str, merge: wt.Merge, target_commit: str, gate_tail: str) -> Path:
        """``<run>/conflict.md``: what the next attempt needs to resolve it, bounded to CONFLICT_BYTES."""
        ws = self.ws
        assert ws is not None and ws.tip is not None
        quarter = CONFLICT_BYTES // 4
        parts = [f"# Previous attempt: {kind}", "", reason, "", "## Conflicted paths", ""]
        parts += [f"- {path}" for path in merge.conflicts] or ["(none: the change merges cleanly)"]
        paths = merge.conflicts
        parts += ["", f"## git log {ws.base[:12]}..{self.config.workspace.target} -- <paths>", "",
                  wt.log_text(ws.repo, ws.base, target_commit, paths, quarter) or "(nothing)"]
        if merge.messages:
            parts += ["", "## Merge messages", "", merge.messages[:quarter]]
        parts += ["", "## Your previous diff", "", "```diff", wt.diff_text(ws.repo, ws.base, ws.tip, quarter), "```"]
        if gate_tail:
            parts += ["", "## Gate output (tail)", "", "```", gate_tail[-quarter:], "```"]
        path = self.run / "conflict.md"
        path.write_text("\n".join(parts)[:CONFLICT_BYTES] + "\n", encoding="utf-8")
        return path

    def close_or_warn(self, warn: Callable[[str], None]) -> None:
        """``close``; a failure is a warning, since ``coordinator gc`` finishes the job later."""
        try:
            self.close()
        except (CoordinatorError, OSError) as exc:
            warn(f"{exc}; `coordinator gc` removes the worktree later, keeping its work")

    def close(self) -> None:
        """Remove the worktree, then log what each step took (``workspace_closed``)."""
        if self.ws is None:
            return
        with self.timed("cleanup"):
            released = self._remove()
        self.store.append_event("workspace_closed", task=self.task.id, epoch=self.claim.epoch, landed=self.landed,
                                steps_ms={k: round(v, 3) for k, v in self.steps_ms.items()})
        if not released:
            raise CoordinatorError(f"{self.ws.path} holds changes that could not be committed, so it is kept")

    def _remove(self) -> bool:
        """A landed branch goes with its worktree; anything unlanded is kept under a salvage ref first.

        False when the worktree holds changes that could not be committed: it stays.
        """
        ws = self.ws
        assert ws is not None
        ref = None if self.landed else wt.salvage(ws, f"salvage: {self.task.id} at epoch {self.claim.epoch}")
        if ref is not None:
            self.store.append_event("salvaged", task=self.task.id, epoch=self.claim.epoch, ref=ref, commit=ws.tip)
        return wt.release(ws, landed=self.landed)  # a gate worktree's candidate is rebuilt from the tip, kept above


def carry_conflict(config: FleetConfig, record: Record | None, run: Path) -> Path | None:
    """The previous attempt's ``conflict.md`` copied into this run, when it ended in a conflict or red gate."""
    if record is None or not record.history or record.history[-1].get("outcome") not in ("conflict", "gate_failed"):
        return None
    source = runs_root(config, record.id) / str(record.history[-1].get("epoch", "")) / "conflict.md"
    if not source.is_file():
        return None
    dest = run / "conflict.md"
    shutil.copyfile(source, dest)
    return dest
