"""Process identity and liveness: the one rule for "is this process still the one we mean?".

A process is named by (pid, start time), because pids are reused. The rule
fails closed, as filelock does: only proof of death counts as dead (no such
pid, a zombie, or the pid now belongs to a process with another start time).
``AccessDenied`` is not proof: the process exists and we may not look at it,
so it counts as alive and its claim is never reclaimed on that account.
"""

from __future__ import annotations

import os
import signal
import socket

import psutil

from .clock import poll

HOST_ENV = "COORDINATOR_HOST"
# This host's identity on claims. PID checks apply only to claims of the same host; claims of
# other hosts expire by lease. COORDINATOR_HOST overrides it (two fleets' "hosts" on one
# machine, or a container whose hostname changes): read once, here, at import.
HOST = os.environ.get(HOST_ENV) or socket.gethostname()
# psutil derives start times from boot time + clock ticks; two reads of one
# process agree far closer than this, while a reused PID differs by much more.
START_TIME_TOLERANCE_S = 0.05
KILL_GRACE_S = 2.0  # how long a runner left by a dead or stale holder gets to stop on SIGTERM
KILL_POLL_S = 0.02


def start_time(pid: int) -> float | None:
    """When ``pid`` started (psutil's create time), or None if it is gone or hidden."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_is_alive(pid: int, started_at: float | None = None) -> bool:
    """Whether ``pid`` runs and (given ``started_at``) is the process that started then."""
    try:
        proc = psutil.Process(pid)
        if started_at is not None and abs(proc.create_time() - started_at) > START_TIME_TOLERANCE_S:
            return False  # the PID was reused by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False
    except psutil.AccessDenied:
        return True  # it exists; we may not inspect it, which proves nothing about its death


def kill_group_of(pid: int, started_at: float, grace_s: float = KILL_GRACE_S) -> None:
    """Stop the process group led by ``pid``, only if ``pid`` is still that process.

    SIGTERM first, so the program can stop cleanly (an agent CLI saving its session,
    a script noting it was stopped); SIGKILL for the group once the leader is gone
    or ``grace_s`` has passed. It returns only when the leader is gone or killed.
    """
    if start_time(pid) is None or not process_is_alive(pid, started_at):
        return  # gone, or hidden from us (AccessDenied): no proof of identity, no kill
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    # Watched, not waited for: waiting would reap the caller's own child behind subprocess's back.
    for _ in poll(KILL_POLL_S, timeout_s=grace_s):
        if not process_is_alive(pid, started_at):
            break
    try:
        os.killpg(pid, signal.SIGKILL)  # members that ignored SIGTERM still share the leader's group id
    except (ProcessLookupError, PermissionError):
        pass
