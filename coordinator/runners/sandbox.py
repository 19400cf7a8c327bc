"""The opt-in agent sandbox: a command agent under bubblewrap (``[agents.X] sandbox = "bwrap"``).

What the sandbox gives a command agent and the programs it starts:

* its own PID namespace, so no other process (the gateway, other agents) shows
  in ``/proc``, and their environments cannot be read;
* the root filesystem read-only, ``/tmp`` included (``TMPDIR`` points into the
  run folder instead: the program itself may live under ``/tmp``);
* writable: its workdir (bound by the descriptor the agent opened, so a swapped
  symlink cannot redirect it), its run folder, and a home of its own per agent
  (``<state_dir>/homes/<agent>``, kept between tasks for tools' caches);
* the state folder is replaced by an empty one, so ``gateway.json`` (the fleet
  token), other tasks' records and runs are not there at all;
* the network is shared, so the gateway on 127.0.0.1 stays reachable through
  the ``ANTHROPIC_BASE_URL`` / ``OPENAI_BASE_URL`` the runner sets, with the
  task's own token.

docs/security.md says what this does and does not protect.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..atomic import PRIVATE_DIR
from ..errors import ConfigError

INSTALL_HINT = "install bubblewrap (Debian: apt-get install bubblewrap), or remove sandbox from the agent"


def bwrap_path() -> str | None:
    """Where bubblewrap is installed, if it is."""
    return shutil.which("bwrap")


def sandboxed(argv: list[str], *, agent_name: str, state_dir: Path, run_dir: Path, workdir: Path,
              workdir_fd: int | None) -> list[str]:
    """``argv`` wrapped in bubblewrap; ``ConfigError`` when bubblewrap is missing."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise ConfigError(f"agent {agent_name!r} runs sandboxed, but bwrap is not installed; {INSTALL_HINT}",
                          key=f"agents.{agent_name}.sandbox")
    state = state_dir.resolve()
    home = state / "homes" / agent_name
    home.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    work = ["--bind-fd", str(workdir_fd), str(workdir)] if workdir_fd is not None else \
        ["--bind", str(workdir), str(workdir)]
    scratch = run_dir / "tmp"  # /tmp stays read-only like the rest: programs may live there (a venv)
    scratch.mkdir(exist_ok=True, mode=PRIVATE_DIR)
    return [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            *work, "--tmpfs", str(state), "--bind", str(run_dir), str(run_dir), "--bind", str(home), str(home),
            "--setenv", "HOME", str(home), "--setenv", "TMPDIR", str(scratch), "--chdir", str(workdir),
            "--", *argv]
