"""The supervisor behind ``coordinator run``: gateway, N agents, watch, restart, shut down.

Agents are ``coordinator agent`` processes in their own sessions, so a Ctrl-C at
the terminal reaches only the supervisor, which then shuts the fleet down in
order: SIGINT to every agent (stop claiming, finish within ``grace_s``), SIGTERM
after the grace period (release now), SIGKILL last, and finally any claim a
killed agent still held is released uncounted. Agents watch the supervisor's
pid and release their claims if it dies, so a ``kill -9`` of ``run`` leaves no
orphans working against a gateway that is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..atomic import PRIVATE_DIR, USER_UMASK_ENV, private_umask
from ..clock import poll
from ..config import FleetConfig
from ..errors import TRANSIENT_STORE_ERRORS
from ..provider_keys import without_secrets
from ..queue.claims import ClaimBook
from ..store import open_store
from ..queue.taskfiles import SharedTaskFiles
from ..tasks.cache import open_index
from .gc import salvage_reclaimed
from .keeper import GatewayKeeper, hold_fleet
from .notes import Notes

TICK_S = 0.5
STAGGER_S = 0.3
STOP_POLL_S = 0.1
RESTART_BACKOFF_S = (0.5, 1, 2, 4, 8, 15, 30)


@dataclass
class AgentProc:
    """One supervised agent process and its restart bookkeeping."""

    agent_id: str
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start_at: float = 0.0
    finished: bool = False  # exited 0 on its own: nothing left for it


@dataclass
class FleetOptions:
    """What ``coordinator run`` was asked for."""

    agents: int
    until_empty: bool
    agent_override: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


class Supervisor:
    """Runs agents, keeps them alive, reclaims stale claims, and stops them in order."""

    def __init__(self, config: FleetConfig, options: FleetOptions,
                 on_tick: Callable[[Supervisor], None] = lambda s: None) -> None:
        self.config = config
        self.options = options
        self.store = open_store(config)
        self.book = ClaimBook(self.store, lease_s=config.fleet.lease_s, heartbeat_s=config.fleet.heartbeat_s)
        self.agents = [AgentProc(f"agent-{n}") for n in range(1, options.agents + 1)]
        self.on_tick = on_tick
        self.stopping: str | None = None
        self.started_at = time.monotonic()
        self.notes = Notes(self.store, "coordinator run")
        self.store_down = False  # the last tick could not reach the state store
        self.task_files: SharedTaskFiles | None = None  # made at the first reap
        self.logs_dir = config.state_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        self.user_umask = private_umask()  # state, logs and the gateway's files are the user's alone

    def agent_env(self) -> dict[str, str]:
        """The agents' environment: the caller's, without provider keys (``provider_keys.py``), with the
        user's umask for the programs tasks run (this process creates its own files private)."""
        return {**without_secrets(self.options.env, self.config), USER_UMASK_ENV: oct(self.user_umask)}

    def spawn(self, slot: AgentProc) -> None:
        """Start (or restart) one agent process."""
        argv = [sys.executable, "-m", "coordinator", "-C", str(self.config.root), "agent", "--id", slot.agent_id,
                "--supervisor", str(os.getpid())]
        if self.options.until_empty:
            argv.append("--until-empty")
        if self.options.agent_override:
            argv += ["--agent", self.options.agent_override]
        log = open(self.logs_dir / f"{slot.agent_id}.log", "ab")  # noqa: SIM115  (the child owns it)
        try:
            slot.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=self.agent_env(), start_new_session=True)
        finally:
            log.close()
        self.notes.event("agent_spawned", agent=slot.agent_id, pid=slot.proc.pid, restarts=slot.restarts)

    def start(self) -> None:
        """Spawn the first agent now and the others a moment later.

        Each agent spends ~0.2 s of CPU importing; eight at once on two cores
        would delay the first claim by a second. Staggered, the first agent boots
        while the gateway starts, and the rest follow at the next tick.
        """
        first, *rest = self.agents
        if first.proc is None and not first.finished:
            self.spawn(first)
        for slot in rest:
            slot.next_start_at = time.monotonic() + STAGGER_S

    def run(self) -> None:
        """Supervise until the queue drains (``until_empty``) or a stop is requested."""
        if all(slot.proc is None for slot in self.agents):
            self.start()
        for _ in poll(TICK_S):
            if self.stopping is not None:
                break
            self.tick()
            if self.options.until_empty and all(slot.finished for slot in self.agents):
                break
        self.shutdown()

    def tick(self) -> None:
        """One supervision pass: restart crashed agents, reap stale claims, report."""
        now = time.monotonic()
        if self.book.pulse():
            self.notes.event("fleet_paused", reason="the supervisor itself was stopped; every holder "
                                                           "gets one lease to renew")
        try:
            for slot in self.agents:
                self._check(slot, now)
            reaped = self.book.reap_stale(self._max_attempts)
            salvage_reclaimed(self.config, self.store, reaped, self.notes.warn)  # workspaces: save their work
        except TRANSIENT_STORE_ERRORS as exc:  # disk full, read-only, the store down: the next tick tries again
            self.notes.warn(f"{exc}; agents wait for it")
            self.store_down = True
        else:
            if self.store_down:  # heartbeats could not be written meanwhile: none of them proves a hang
                self.store_down = False
                self.book.grant_grace()
        self.on_tick(self)

    def _check(self, slot: AgentProc, now: float) -> None:
        if slot.finished or slot.proc is None:
            if slot.proc is None and not slot.finished and now >= slot.next_start_at:
                self.spawn(slot)
            return
        code = slot.proc.poll()
        if code is None:
            self._kill_if_hung(slot)
            return
        if self.options.until_empty and self._stopped_cleanly(slot, code):
            slot.finished = True  # nothing left for it (exit 1: some of the work failed, which is no crash)
            return
        delay = RESTART_BACKOFF_S[min(slot.restarts, len(RESTART_BACKOFF_S) - 1)]
        self.notes.event("agent_exited", agent=slot.agent_id, pid=slot.proc.pid, code=code,
                                restart_in_s=delay)
        slot.restarts += 1
        slot.proc, slot.next_start_at = None, now + delay

    def _stopped_cleanly(self, slot: AgentProc, code: int) -> bool:
        """Exited 0 or 1 after publishing "stopped": the queue drained (1 = with failed work)."""
        if code not in (0, 1):
            return False
        status = self.store.read_agent(slot.agent_id)
        return status is not None and status.get("pid") == slot.proc.pid and status.get("state") == "stopped"

    def _kill_if_hung(self, slot: AgentProc) -> None:
        """An agent whose heartbeat is older than its lease is hung: kill it; it is restarted next tick."""
        status = self.store.read_agent(slot.agent_id)
        if self.book.in_grace() or status is None or status.get("pid") != slot.proc.pid:
            return  # not published yet (still booting)
        age_s = self.store.now() - float(status.get("heartbeat_at", 0.0))
        if age_s > self.config.fleet.lease_s + self.config.fleet.heartbeat_s:
            self.notes.event("agent_hung", agent=slot.agent_id, pid=slot.proc.pid,
                                    heartbeat_age_s=round(age_s, 1))
            slot.proc.kill()  # its claim is then stale by pid and reaped on this very tick

    def request_stop(self, reason: str) -> None:
        """Ask the loop to shut down (signal handlers call this)."""
        if self.stopping is None:
            self.stopping = reason

    def shutdown(self) -> None:
        """SIGINT, wait grace_s; SIGTERM; SIGKILL; release what dead agents still hold."""
        live = [s.proc for s in self.agents if s.proc is not None and s.proc.poll() is None]
        grace = self.config.fleet.grace_s
        for sig, wait_s in ((signal.SIGINT, grace + 2.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            live = [p for p in live if p.poll() is None]
            if not live:
                break
            for proc in live:
                _signal(proc, sig)
            _wait_all(live, wait_s, self.on_tick_safe)
        try:
            released = self.book.release_dead(reason="fleet stopped")
        except TRANSIENT_STORE_ERRORS as exc:  # their claims expire by lease instead
            self.notes.warn(f"{exc}; the claims of stopped agents expire by lease")
            return
        salvage_reclaimed(self.config, self.store, released, self.notes.warn)

    def on_tick_safe(self) -> None:
        """Keep the display moving while waiting for agents to stop."""
        self.on_tick(self)

    def _max_attempts(self, task_id: str) -> int:
        # One index for the supervisor's life: a reap re-reads only changed files, and on Redis
        # publishes only what this process has not published yet.
        self.task_files = self.task_files or SharedTaskFiles(self.store, open_index(self.config))
        task = self.task_files.refresh().tasks.get(task_id)
        return task.max_attempts if task else 1

    def agent_pids(self) -> dict[str, int | None]:
        """Current pid of each agent slot (None while waiting to restart)."""
        return {s.agent_id: s.proc.pid if s.proc is not None else None for s in self.agents}


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _wait_all(procs: list[subprocess.Popen], timeout_s: float, tick: Callable[[], Any]) -> None:
    for _ in poll(STOP_POLL_S, timeout_s=timeout_s):
        if all(p.poll() is not None for p in procs):
            return
        tick()


EXIT_SIGNALS = {"SIGINT": 130, "SIGTERM": 143}


class Display(AbstractContextManager, Protocol):
    """What ``run`` shows while the fleet works (the live view of ``ui/``, or anything else)."""

    def update(self) -> None:
        """Refresh if due; called on every supervision tick."""

    def finish(self) -> dict[str, Any]:
        """Show the end of the run; return the final status report."""


def run_fleet(config: FleetConfig, options: FleetOptions, make_display: Callable[[], Display]) -> int:
    """``coordinator run``: gateway + supervisor + display; returns the exit code."""
    lock = hold_fleet(config)
    supervisor = Supervisor(config, options)
    keeper = GatewayKeeper(config, options.env, supervisor.notes.event)
    previous = {sig: signal.signal(sig, lambda signum, frame: supervisor.request_stop(signal.Signals(signum).name))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    started = False
    try:
        supervisor.start()  # before the heavy imports below: the first agent boots while they run
        display = make_display()
        supervisor.on_tick = lambda s: (keeper.ensure(), display.update())
        keeper.ensure(force=True)
        started = True
        with display:
            supervisor.run()
    finally:
        if not started:
            supervisor.shutdown()  # the gateway failed to start: take the agents down with us
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        keeper.stop()
        lock.release()
    status = display.finish()
    if supervisor.stopping is not None:
        return EXIT_SIGNALS.get(supervisor.stopping, 1)
    counts = status["tasks"]
    if not counts:  # the store could not be read at the end: nothing proves the work is done
        return 1
    return 1 if counts["failed"] or counts["blocked"] or counts["invalid"] or counts["pending"] else 0
