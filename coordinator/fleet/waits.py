"""How an agent waits out what is not its task's fault: a state it cannot write, a store or gateway that is down.

Each wait is one ``poll()`` loop with capped backoff, and each ends as soon as the
agent is asked to stop. None of them counts an attempt against a task.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from ..clock import poll
from ..config import FleetConfig
from ..errors import TRANSIENT_STORE_ERRORS
from ..gateway.client import read_gateway
from ..store import Store

T = TypeVar("T")
# A state write that failed (disk full, read-only, the store down) is tried again this often, doubling to the cap.
STATE_RETRY_S = 0.5
STATE_RETRY_MAX_S = 10.0
STORE_RETRY_MAX_S = 2.0  # an unreachable store is probed at least this often, so agents resume soon after it
# Waits between checks for a gateway that went away: quick at first, then every few seconds.
GATEWAY_RETRY_S = 0.2
GATEWAY_RETRY_MAX_S = 5.0


def persist(write: Callable[[], T], *, warn: Callable[[str], None], stopped: Callable[[], bool]) -> T | None:
    """Write a finished run's outcome, retrying with backoff while the state cannot be written.

    A run that finished must never run again because its record could not be
    written: the write is retried until it succeeds, or until the agent is stopped (None).
    """
    for _ in poll(STATE_RETRY_S, growth=2.0, max_step_s=STATE_RETRY_MAX_S):
        try:
            return write()
        except TRANSIENT_STORE_ERRORS as exc:
            warn(f"{exc}; the finished run's record is written as soon as it can be")
        if stopped():
            return None
    return None


def await_store(store: Store, *, warn: Callable[[str], None], wake: threading.Event,
                stopped: Callable[[], bool]) -> None:
    """Wait until the state store answers again (or the agent is asked to stop)."""
    for _ in poll(STATE_RETRY_S, growth=2.0, max_step_s=STORE_RETRY_MAX_S, wake=wake):
        if stopped():
            return
        try:
            store.is_paused()
        except TRANSIENT_STORE_ERRORS:
            continue
        warn("the state store answers again; claiming")
        return


def await_gateway(config: FleetConfig, *, wake: threading.Event, stopped: Callable[[], bool]) -> None:
    """Wait until a gateway answers (or the agent is asked to stop)."""
    for _ in poll(GATEWAY_RETRY_S, growth=2.0, max_step_s=GATEWAY_RETRY_MAX_S, wake=wake):
        gateway = read_gateway(config)
        if (gateway is not None and gateway.is_healthy()) or stopped():
            return
