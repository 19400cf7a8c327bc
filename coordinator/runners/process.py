"""Run one argv as a child process: never a shell, output streamed to files.

The child gets its own session (process group), so a timeout, a cancel or a lost
claim kills everything it started, and a Ctrl-C at the terminal reaches only the
coordinator, which decides. stdout and stderr go straight to files, so a child
printing gigabytes cannot deadlock on a full pipe.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic import USER_UMASK_ENV
from ..clock import poll

POLL_S = 0.05
KILL_GRACE_S = 2.0
# With ``on_spawn``, the child waits at this gate until the caller has been told its pid (and
# has written it into the claim): an agent killed in between closes the pipe, and the child
# exits 125 having run nothing, so no runner is ever left that a takeover cannot find and
# kill. The script is fixed; the task's argv only ever reaches it as "$@", never as text.
GATE = 'fd=$1; shift; read -r go <&"$fd"; [ "$go" = go ] || exit 125; eval "exec $fd<&-"; exec "$@"'


@dataclass(frozen=True)
class ProcessResult:
    """How a child ended: its exit code, or why it was stopped."""

    returncode: int | None
    timed_out: bool = False
    stopped: str | None = None  # the reason should_stop gave, when it stopped the child
    error: str | None = None  # the program could not be started

    @property
    def ok(self) -> bool:
        """Exited 0 on its own."""
        return self.returncode == 0 and not self.timed_out and self.stopped is None and self.error is None

    def describe(self) -> str:
        """One line saying how the process ended."""
        if self.error:
            return self.error
        if self.timed_out:
            return "timed out"
        if self.stopped:
            return f"stopped: {self.stopped}"
        return f"exited with code {self.returncode}"


def run_process(argv: Sequence[str], *, cwd: Path | int, env: Mapping[str, str], stdout: Path, stderr: Path,
                timeout_s: float, should_stop: Callable[[], str | None] = lambda: None,
                on_spawn: Callable[[int], None] | None = None) -> ProcessResult:
    """Run ``argv`` to completion, a timeout, or until ``should_stop`` returns a reason.

    ``cwd`` may be an open folder descriptor: the child then enters that very folder
    (``/proc/self/fd/N`` inside the child), whatever its name points at by now.
    """
    fds: tuple[int, ...] = ()
    if isinstance(cwd, int):
        cwd, fds = f"/proc/self/fd/{cwd}", (cwd,)
    if on_spawn is not None and "/" not in argv[0] and shutil.which(argv[0], path=env.get("PATH")) is None:
        return ProcessResult(None, error=f"cannot start {argv[0]!r}: No such file or directory")
    gate_r, gate_w = os.pipe() if on_spawn is not None else (-1, -1)
    full = ["/bin/sh", "-c", GATE, "coordinator-gate", str(gate_r), *argv] if on_spawn is not None else list(argv)
    with open(stdout, "ab") as out, open(stderr, "ab") as err:
        try:
            proc = subprocess.Popen(full, cwd=cwd, pass_fds=fds + ((gate_r,) if gate_r >= 0 else ()), env=dict(env),
                                    stdin=subprocess.DEVNULL, umask=int(env.get(USER_UMASK_ENV, "-1"), 8),
                                    stdout=out, stderr=err, start_new_session=True)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            _close(gate_r, gate_w)
            return ProcessResult(None, error=f"cannot start {argv[0]!r}: {exc.strerror or exc}")
        if on_spawn is not None:
            os.close(gate_r)
            try:
                on_spawn(proc.pid)
            finally:
                os.write(gate_w, b"go\n")
                os.close(gate_w)
        for _ in poll(POLL_S, timeout_s=timeout_s, wait=lambda s: _wait_exit(proc, s)):
            code = proc.poll()
            if code is not None:
                return ProcessResult(code)
            reason = should_stop()
            if reason:
                kill_group(proc)
                return ProcessResult(proc.returncode, stopped=reason)
        if proc.poll() is not None:
            return ProcessResult(proc.returncode)
        kill_group(proc)
        return ProcessResult(proc.returncode, timed_out=True)


def _close(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def _wait_exit(proc: subprocess.Popen, seconds: float) -> None:
    """Block until the child exits or ``seconds`` pass."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the child's whole process group, then SIGKILL what is left."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # The leader is gone; members that ignored SIGTERM still share its group id.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
