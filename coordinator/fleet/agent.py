"""The agent process: claim → run → record, renewing its lease while it works.

Signals: SIGTERM stops at once (the runner is killed, the claim released
uncounted, exit 0); SIGINT stops claiming and gives the running task
``grace_s`` before doing the same; SIGUSR1 asks for an immediate claim check
(``coordinator cancel`` sends it so a cancelled task stops without waiting for
the next heartbeat).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..atomic import USER_UMASK_ENV, private_umask
from ..clock import poll
from ..config import AgentConfig, FleetConfig
from ..errors import (
    TRANSIENT_STORE_ERRORS,
    ClaimLostError,
    ConfigError,
    CoordinatorError,
    StoreUnavailableError,
)
from ..gateway.client import GatewayInfo, read_gateway
from ..paths import open_workdir
from ..provider_keys import without_secrets
from ..queue.claims import ClaimBook, current_holder, retry_backoff_s
from ..queue.picking import claim_best
from ..queue.view import QueueView
from ..runners import RunContext, RunResult, get_runner
from ..store import Claim, open_store
from ..store.base import ready_set
from ..tasks import State, Task
from .gc import salvage_reclaimed
from .homes import config_dir_env
from .landing import ClaimWorkspace, carry_conflict, open_workspace
from .lease import LeaseWatch, keep_alive
from .notes import Notes
from .settings import AgentSettings
from .waits import await_gateway, await_store, persist
from .workspace import dependency_outputs, run_dir, write_feedback, write_prompt
from .worktrees import discard_spares

T = TypeVar("T")
IDLE_POLL_S = 0.2
REAP_EVERY_S = 1.0
# `coordinator run` starts agents and its gateway together; an agent's first task may need to wait.
GATEWAY_WAIT_S = 10.0
GATEWAY_POLL_S = 0.05


class Agent:
    """One agent process's loop and its shutdown state."""

    def __init__(self, config: FleetConfig, agent_id: str, *, env: Mapping[str, str],
                 until_empty: bool = False, agent_override: str | None = None,
                 supervisor_pid: int | None = None) -> None:
        self.config = config
        self.agent_id = agent_id
        # Keys never pass on (an agent started by hand has them in its environment); state is
        # written private, and the programs tasks run get the user's own umask back.
        self.env = {**without_secrets(env, config), USER_UMASK_ENV: oct(private_umask())}
        self.env.pop(config.fleet.state_password_env or "", None)  # the state store's password is ours alone
        self.until_empty = until_empty
        self.agent_override = agent_override
        self.supervisor_pid = supervisor_pid
        self.store = open_store(config)
        self.book = ClaimBook(self.store, lease_s=config.fleet.lease_s, heartbeat_s=config.fleet.heartbeat_s)
        self.view = QueueView(config, self.store)
        self.holder = current_holder(agent_id)
        self.stop_now = False
        self.grace_until: float | None = None
        self.lost: str | None = None
        self.fenced = False  # the run was stopped because the lease could not be renewed (lease.py)
        self.watch = LeaseWatch(self.book.clock, config.fleet.lease_s, config.fleet.heartbeat_s)
        self.wake = threading.Event()  # the main loop: a signal or a finished task
        self.beat_wake = threading.Event()  # the heartbeat: check the claim now
        self.counts = {"done": 0, "failed": 0}
        self.current: tuple[Task, Claim] | None = None
        self.started_at = time.time()
        self._reaped_at = float("-inf")
        self.claim_ms = 0.0
        self._published_at = float("-inf")
        self.run_ms = 0.0
        self.run_started = 0.0  # perf_counter at the start of the current run (a landing records it up to then)
        self.overhead = {"tasks": 0, "claim_ms": 0.0, "record_ms": 0.0}
        self.child_pid: int | None = None
        self.notes = Notes(self.store, agent_id)
        self.settings = AgentSettings(config, self.notes.warn)  # [agents.*] reread at each claim
        self.space: ClaimWorkspace | None = None  # the current claim's worktree (docs/workspaces.md)
        self.settled: Any = None  # the record the store wrote while landing or re-queueing, if it did
        self.landing: dict[str, Any] | None = None  # what the merge queue shows of this agent

    # -- the loop -------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (or, with ``until_empty``, until nothing is left)."""
        self._install_signals()
        self._full_resync()
        self.notes.event("agent_started", agent=self.agent_id, pid=self.holder.pid)
        self.publish("idle")
        for _ in poll(IDLE_POLL_S, wake=self.wake):
            if self.is_stopping():
                break
            try:
                picked = self.claim_next()
            except StoreUnavailableError as exc:  # Redis down: wait for it, never crash
                self.notes.warn(f"{exc}; waiting for it before claiming again")
                await_store(self.store, warn=self.notes.warn, wake=self.wake, stopped=self.is_stopping)
                continue
            except TRANSIENT_STORE_ERRORS as exc:  # disk full, read-only: wait and try again, never crash
                self.notes.warn(f"{exc}; claiming again once it can be written")
                continue
            if picked is None:
                if self.until_empty and self._is_queue_drained():
                    break
                if time.monotonic() - self._published_at >= self.config.fleet.heartbeat_s:
                    self.publish("idle")
                continue
            self.work(*picked)
            self.wake.set()  # claim the next task at once
        self.publish("stopped")
        discard_spares(self.config, self.agent_id, self.notes.warn)
        self.notes.event("agent_stopped", agent=self.agent_id, pid=self.holder.pid, **self.counts)
        return 1 if self.until_empty and self.view.has_failed_work() else 0

    def claim_next(self) -> tuple[Task, Claim] | None:
        """Reread changed agent settings, reap stale claims, and claim the best ready task (queue/picking.py)."""
        self.config = self.settings.refresh(self.config)
        self.view.rescan_if_due()
        started = time.perf_counter()
        self.book.pulse()
        self._maybe_reap()
        picked = claim_best(self.view, self.book, self.holder, self.notes.warn)
        if picked is not None:
            self.claim_ms = (time.perf_counter() - started) * 1000
        return picked

    def work(self, task: Task, claim: Claim) -> None:
        """Run one claimed task with a live heartbeat, then record the outcome (fenced)."""
        self.current, self.lost, self.fenced, self.child_pid = (task, claim), None, False, None
        self.watch = LeaseWatch(self.book.clock, self.config.fleet.lease_s, self.config.fleet.heartbeat_s)
        self.publish("running")
        beat = threading.Thread(target=self._heartbeat, args=(claim,), daemon=True)
        beat.start()
        self.run_started = time.perf_counter()
        try:
            result = self._run(task, claim)
        finally:
            self.run_ms = (time.perf_counter() - self.run_started) * 1000
            self.current, self.landing = None, None
            self.beat_wake.set()
            beat.join()
            self.beat_wake.clear()
        self._record(task, claim, result)

    # -- pieces ---------------------------------------------------------------

    def _run(self, task: Task, claim: Claim) -> RunResult:
        """Build the context and call the task's runner; user errors become failures."""
        agent_name = task.agent or self.agent_override or self.config.fleet.default_agent
        self.space, self.settled = None, None
        try:
            agent = self.config.agent_named(agent_name)
            self.space = open_workspace(self.config, self.store, task, claim, agent,
                                        run=run_dir(self.config, task.id, claim.epoch), env=self.env,
                                        should_stop=self._should_stop, on_phase=self._on_phase)
            root = self.space.path if self.space else self.config.root
            # Opened once, component by component, without following symlinks; the path is only
            # for display and placeholders (resolving it again would race a swapped symlink).
            workdir_fd = open_workdir(root, task.workdir or ".")
            workdir = Path(os.path.normpath(Path(root).resolve() / (task.workdir or ".")))
            if self.space is None and workdir.is_relative_to(self.config.state_dir.resolve()):
                os.close(workdir_fd)
                raise ConfigError(f"{task.workdir!r} is inside the state folder; use a folder of your own",
                                  key="workdir")
        except CoordinatorError as exc:  # a bad task fails its attempt, not the agent
            if self.space is not None:
                self.space.close_or_warn(self.notes.warn)
            return RunResult(False, str(exc))
        try:
            ctx = self._context(task, claim, agent_name, agent, workdir, workdir_fd)
            result = get_runner(agent.kind)(ctx)
            if self.space is not None and result.ok:  # precheck, gate and land, fenced by the store
                settled = self.space.settle(dict(ctx.env), self._shutdown_reason, self._on_spawn, extra={
                    "file_hash": task.definition_hash(), "claim_ms": round(self.claim_ms, 3),
                    "run_ms": round((time.perf_counter() - self.run_started) * 1000, 3)})
                result, self.settled, self.lost = settled.result, settled.record, self.lost or settled.lost
        finally:
            os.close(workdir_fd)
            if self.space is not None:
                self.space.close_or_warn(self.notes.warn)
        if ctx.gateway_token is not None:
            result.usage = self._usage(task) or result.usage
        return result

    def _context(self, task: Task, claim: Claim, agent_name: str, agent: AgentConfig, workdir: Path,
                 workdir_fd: int) -> RunContext:
        """Everything the runner needs: run folder, gateway token, dependencies' outputs, feedback."""
        gateway = self._gateway()
        run = run_dir(self.config, task.id, claim.epoch)
        previous = self.store.read_record(task.id) if claim.attempt > 1 or self.space else None
        env = {**self.env, **config_dir_env(self.config, self.agent_id, agent, self.env),
               **(self.space.env() if self.space else {})}
        token = gateway.task_token(task, self.agent_id, attempt=claim.attempt, generation=claim.generation,
                                   agent_name=agent_name) if gateway else None
        return RunContext(task=task, agent_id=self.agent_id, agent_name=agent_name, agent=agent,
                          config=self.config, attempt=claim.attempt, run_dir=run, workdir=workdir,
                          workdir_fd=workdir_fd, env=env, should_stop=self._should_stop,
                          on_spawn=self._on_spawn, gateway_url=gateway.url if gateway else None,
                          gateway_token=token, prompt_file=write_prompt(task, run),
                          deps=dependency_outputs(self.config, self.store, task, run),
                          feedback_file=write_feedback(self.config, previous, run),
                          conflict_file=carry_conflict(self.config, previous, run) if self.space else None,
                          after_work=self.space.commit if self.space else None)

    # -- workspaces (docs/workspaces.md) ----------------------------------------

    def _on_phase(self, phase: str, info: dict[str, Any]) -> None:
        """Show where this agent's landing is (gating, landing, held and why) in its heartbeat file."""
        self.landing = {"phase": phase, **info}
        self.publish(phase)

    def _usage(self, task: Task) -> dict[str, Any] | None:
        """The gateway's accounting for the task, if a gateway still answers."""
        gateway = read_gateway(self.config)
        return gateway.task_usage(task.id) if gateway is not None else None

    def _gateway(self) -> GatewayInfo | None:
        """The running gateway; a supervised agent waits for its fleet's to come up."""
        wait_s = GATEWAY_WAIT_S if self.supervisor_pid is not None else 0.0
        for _ in poll(GATEWAY_POLL_S, timeout_s=wait_s):
            gateway = read_gateway(self.config)
            if gateway is not None or self._should_stop():
                return gateway
        return None

    def _record(self, task: Task, claim: Claim, result: RunResult) -> None:
        """Write the outcome; a lost claim is refused by fencing and logged."""
        if self.settled is not None:  # landed or re-queued: the store wrote the record while the claim was live
            if self.settled.state in (State.DONE, State.FAILED):
                self.counts["done" if self.settled.state == State.DONE else "failed"] += 1
            return
        try:
            if self.fenced:  # not the task's fault: given back uncounted, once the store answers
                persist(lambda: self.book.release(claim, reason=f"self-fenced: {self.lost}"), warn=self.notes.warn,
                        stopped=lambda: self.stop_now)
                return
            if not result.ok and self.lost is None and self._shutdown_reason() is not None:
                # Cut short by our own shutdown: not the task's fault, so the attempt is not counted.
                # A run that finished is recorded below even while stopping, or it would run twice.
                self.book.release(claim, reason="agent stopping")
                return
            if not result.ok and result.infra:
                # The gateway, not the task, failed: give the task back uncounted and wait for it.
                self.book.release(claim, reason=f"infrastructure: {result.error}")
                self.notes.warn("the gateway is unreachable; waiting for it before claiming again")
                self.publish("waiting for gateway")
                await_gateway(self.config, wake=self.wake, stopped=lambda: self._should_stop() is not None)
                return
            started = time.perf_counter()
            record = persist(lambda: self.book.finish(
                claim, ok=result.ok, error=result.error, usage=result.usage, max_attempts=task.max_attempts,
                backoff_s=retry_backoff_s(self.config.fleet, claim.attempt),
                extra={"file_hash": task.definition_hash(), "claim_ms": round(self.claim_ms, 3),
                       "run_ms": round(self.run_ms, 3), **(self.space.fields() if self.space else {})}),
                warn=self.notes.warn, stopped=lambda: self.stop_now)
            if record is None:
                return  # stopped before the disk let us write; the claim's holder is gone, so it is reclaimed
            self.counts["done" if record.state == State.DONE else "failed"] += 1
            # The coordinator's own cost per task, published for `status` and scripts/bench_queue.py.
            self.overhead["tasks"] += 1
            self.overhead["claim_ms"] += self.claim_ms
            self.overhead["record_ms"] += (time.perf_counter() - started) * 1000
        except ClaimLostError as exc:
            self.notes.warn(f"{exc}; the result of this attempt is discarded")

    def _heartbeat(self, claim: Claim) -> None:
        """Renew the lease until the run ends (lease.py); on loss, flag it so the runner is stopped."""
        lost = keep_alive(self.book, claim, self.watch, wake=self.beat_wake, is_current=lambda: self.current is not None,
                          child_pid=lambda: self.child_pid, warn=self.notes.warn,
                          on_renewed=lambda: self.publish("running"))
        self.lost = self.lost or lost

    def _should_stop(self) -> str | None:
        if self.lost:
            return self.lost
        if self.current is not None and (fence := self.watch.fence_reason()):
            self.lost, self.fenced = fence, True  # self-fencing: stop before the lease runs out (lease.py)
            self.notes.warn(f"{self.current[0].id}: {fence}")
            return fence
        return self._shutdown_reason()

    def _shutdown_reason(self) -> str | None:
        if self.stop_now:
            return "agent stopping (SIGTERM)"
        if self.supervisor_pid is not None and os.getppid() != self.supervisor_pid:
            self.stop_now = True  # our `coordinator run` died: release, don't work for a dead fleet
            return "supervisor is gone"
        if self.grace_until is not None and time.monotonic() >= self.grace_until:
            return "grace period over"
        return None

    def is_stopping(self) -> bool:
        """Whether a signal (or the supervisor's death) asked this agent to stop claiming."""
        return self._shutdown_reason() is not None or self.grace_until is not None

    def _maybe_reap(self) -> None:
        now = time.monotonic()
        if now - self._reaped_at < REAP_EVERY_S:
            return
        self._reaped_at = now
        tasks = self.view.taskset.tasks
        reaped = self.book.reap_stale(lambda tid: tasks[tid].max_attempts if tid in tasks else 1)
        salvage_reclaimed(self.config, self.store, reaped, self.notes.warn)

    def _on_spawn(self, pid: int) -> None:
        """Write the runner's pid into the claim before it runs (it waits at a gate: runners/process.py)."""
        self.child_pid = pid
        current = self.current
        if current is None:
            return
        try:
            self.book.renew(current[1], child_pid=pid)
        except ClaimLostError as exc:
            self.lost = self.lost or exc.args[0]
        except TRANSIENT_STORE_ERRORS as exc:  # the next heartbeat writes it; fencing covers the rest
            self.notes.warn(f"{exc}; the runner's pid goes into the claim at the next heartbeat")

    def _full_resync(self) -> None:
        """Rebuild the view, reap, and put back running records that lost their claim."""
        self.view.resync()  # first: reaping needs each task's max_attempts
        self._reaped_at = float("-inf")
        self._maybe_reap()
        running = [tid for tid, state in self.view.states.items() if state == State.RUNNING]
        self.store.repair(running)
        self.view.catch_up()

    def _is_queue_drained(self) -> bool:
        """Nothing ready and nothing running anywhere, after a full resync (which a ready set spares while busy)."""
        if (ready := ready_set(self.store)) is not None and any(ready.ready_counts()):
            return False  # one round trip, not every record, while the last tasks run elsewhere
        self._full_resync()
        counts = self.view.counts()
        return counts.ready == 0 and counts.running == 0 and counts.backing_off == 0

    def publish(self, state: str) -> None:
        """Write this agent's heartbeat file, agents/<agent>.json."""
        current = self.current
        status: dict[str, Any] = {
            "id": self.agent_id, "pid": self.holder.pid, "pid_started_at": self.holder.pid_started_at,
            "host": self.holder.host, "state": state, "task": current[0].id if current else None,
            "task_started_at": current[1].claimed_at if current else None, "heartbeat_at": time.time(),
            "started_at": self.started_at, **self.counts, "landing": self.landing,
            "overhead": {k: round(v, 3) for k, v in self.overhead.items()}}
        try:
            self.store.write_agent(self.agent_id, status)
        except TRANSIENT_STORE_ERRORS as exc:
            self.notes.warn(f"{exc}; status shows this agent's last heartbeat until then")
        self._published_at = time.monotonic()

    def _install_signals(self) -> None:
        def wake_all() -> None:
            self.wake.set()
            self.beat_wake.set()

        def on_term(signum: int, frame: Any) -> None:
            self.stop_now = True
            wake_all()

        def on_int(signum: int, frame: Any) -> None:
            if self.grace_until is None:
                self.grace_until = time.monotonic() + self.config.fleet.grace_s
            else:
                self.stop_now = True  # a second Ctrl-C: stop now
            wake_all()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)
        signal.signal(signal.SIGUSR1, lambda signum, frame: wake_all())


def default_agent_id() -> str:
    """``agent-<pid>`` for an agent started by hand."""
    return f"agent-{os.getpid()}"

