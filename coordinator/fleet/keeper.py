"""What `coordinator run` holds for its fleet: the one-fleet-per-root lock, and a live gateway.

One `run` per fleet root: a second one in a live fleet would start agents with
the same ids and a gateway of its own. `run.lock` is an flock held for the life
of the run (the kernel drops it if the run dies), so a second `run` is refused
with a message naming the first, and a `run` after a crash starts normally.

The gateway: a healthy gateway already serving this fleet (`coordinator gateway`)
is reused and left running; otherwise `run` serves one on a thread of its own.
Either way the keeper checks it every second and starts an embedded one if it is
gone, so a gateway that dies costs agents a wait, never a task.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from filelock import FileLock, Timeout

from ..atomic import PRIVATE_DIR, PRIVATE_FILE, read_json, write_json_atomic
from ..config import FleetConfig
from ..errors import FleetRunningError, StateError
from ..gateway.client import read_gateway

CHECK_EVERY_S = 1.0


def hold_fleet(config: FleetConfig) -> FileLock:
    """Take the fleet root's run lock, or raise ``FleetRunningError`` naming the run that has it."""
    path = config.state_dir / "run.lock"
    lock = FileLock(path, mode=PRIVATE_FILE)
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        lock.acquire(timeout=0)
        write_json_atomic(config.state_dir / "run.json", {"pid": os.getpid(), "started_at": time.time()},
                          mode=PRIVATE_FILE)
    except Timeout:
        holder = read_json(config.state_dir / "run.json")
        raise FleetRunningError(config.root, holder.get("pid") if isinstance(holder, dict) else None) from None
    except OSError as exc:  # disk full, read-only: one line naming the path and the fix
        raise StateError(exc.filename or path, exc) from exc
    return lock


def require_no_gateway(config: FleetConfig) -> None:
    """``coordinator gateway`` serves a fleet that has none: a second one would replace gateway.json."""
    info = read_gateway(config)
    if info is not None and info.is_healthy():
        raise FleetRunningError(config.root, info.pid, what=f"a gateway ({info.url})",
                                hint="`coordinator run` and agents use it as it is; stop it to start another")


class GatewayKeeper:
    """Reuses a healthy gateway, else runs one embedded; starts one again whenever it is gone."""

    def __init__(self, config: FleetConfig, env: Mapping[str, str], note: Callable[..., None]) -> None:
        self.config = config
        self.env = env
        self.note = note  # appends an event: (kind, **fields)
        self.handle: Any = None  # our embedded gateway, if we run one
        self.started = False  # a gateway has served this run (ours or one we reused)
        self.checked_at = float("-inf")

    def ensure(self, *, force: bool = False) -> None:
        """Make sure a gateway serves the fleet (checked at most every CHECK_EVERY_S).

        At the start, a healthy gateway already serving the fleet is reused. After
        that a gateway is replaced only on proof that it is gone (our thread ended,
        or gateway.json names no live process), never because it answered slowly:
        on a loaded machine a slow answer is not a death, and a second gateway would
        cut every stream in flight.
        """
        if not force and time.monotonic() - self.checked_at < CHECK_EVERY_S:
            return
        self.checked_at = time.monotonic()
        if self.handle is not None and self.handle.is_alive():
            return
        info = read_gateway(self.config)  # None when missing or its process is dead
        if self.handle is None and info is not None and (self.started or info.is_healthy()):
            self.started = True
            return
        from ..gateway.server import start_in_thread

        restarting = self.started
        if self.handle is not None:
            self.handle.stop(timeout_s=2.0)
        self.handle = start_in_thread(self.config, self.env)
        self.started = True
        self.note("gateway_started", url=self.handle.url, embedded=True, restarted=restarting)

    def stop(self) -> None:
        """Stop the embedded gateway, if we run one; a reused one is left running."""
        if self.handle is not None:
            self.handle.stop()
            self.handle = None
