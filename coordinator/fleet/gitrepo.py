"""Git, as the workspace lifecycle uses it: one runner for every command, a repository lock, the checks.

Every git call is an argv list through ``git()`` (never a shell), so a branch or
a path can never become shell syntax, and every failure becomes one ``GitError``
naming the command. ``git worktree add`` and ``remove`` rewrite
``.git/config.lock`` and ``.git/worktrees/``, which git does not guard against
concurrent callers, so they run under ``repo_lock()``, a flock in the
repository's common git dir (shared by every fleet using that repository).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ..config import FleetConfig
from ..errors import ConfigError, GitError

MIN_GIT = (2, 38)  # `git merge-tree --write-tree`
LOCK_POLL_S = 0.002
# Git must never stop to ask, and must not read the user's editor or pager settings.
QUIET_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_EDITOR": "true", "GIT_PAGER": "cat", "LC_ALL": "C"}


@dataclass(frozen=True)
class GitResult:
    """What a git command printed, and how it ended."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def out(self) -> str:
        """stdout without its trailing newline."""
        return self.stdout.rstrip("\n")


def git(args: Sequence[str], *, cwd: Path, check: bool = True, env: Mapping[str, str] | None = None,
        input_text: str | None = None, timeout_s: float = 120.0) -> GitResult:
    """Run ``git <args>`` in ``cwd``; ``GitError`` on a non-zero exit when ``check``."""
    argv = ["git", *args]
    full_env = {**(env if env is not None else os.environ), **QUIET_ENV}
    try:
        proc = subprocess.run(argv, cwd=cwd, env=full_env, input=input_text, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(argv, None, str(exc)) from exc
    result = GitResult(proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise GitError(argv, proc.returncode, proc.stderr or proc.stdout)
    return result


def rev(repo: Path, name: str) -> str | None:
    """The commit ``name`` points at, or None if it names nothing."""
    result = git(["rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"], cwd=repo, check=False)
    return result.out if result.returncode == 0 else None


def common_dir(repo: Path) -> Path:
    """The repository's shared git dir (``.git`` of the primary checkout)."""
    out = git(["rev-parse", "--git-common-dir"], cwd=repo).out
    return (repo / out).resolve()


@contextmanager
def repo_lock(repo: Path) -> Iterator[None]:
    """Hold the repository's worktree lock (``worktree add``/``remove`` race on git's own files)."""
    with FileLock(common_dir(repo) / "coordinator-worktrees.lock", poll_interval=LOCK_POLL_S):
        yield


def worktree_list(repo: Path) -> str:
    """``git worktree list --porcelain``, under the repository lock.

    A ``worktree add`` writes its admin files one by one; ``list`` reading them
    half-written fails ("failed to read .git/worktrees/…/commondir").
    """
    with repo_lock(repo):
        return git(["worktree", "list", "--porcelain"], cwd=repo).out


def git_version(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """The installed git's (major, minor)."""
    text = git(["--version"], cwd=Path("/"), env=env).out
    found = re.search(r"(\d+)\.(\d+)", text)
    if found is None:
        raise ConfigError(f"cannot read the git version from {text!r}; install git 2.38 or newer")
    return int(found.group(1)), int(found.group(2))


def repo_path(config: FleetConfig) -> Path:
    """The ``[workspace] repo`` folder, absolute."""
    return (config.root / config.workspace.repo).resolve()


def check_workspace(config: FleetConfig) -> None:
    """Validate ``[workspace]`` against the real repository: each problem is one ``ConfigError`` with its fix.

    Called when a command that needs workspaces starts (``run``, ``agent``, ``gc``),
    not at config load, so ``status`` never waits on git.
    """
    ws = config.workspace
    if ws.mode != "worktree":
        return
    path = config.config_path
    try:
        version = git_version()
    except GitError as exc:
        raise ConfigError(f"git cannot be run ({exc}); install git 2.38 or newer", path=path,
                          key="workspace.mode") from exc
    if version < MIN_GIT:
        raise ConfigError(f"git {version[0]}.{version[1]} is older than 2.38, which worktree mode needs "
                          "(merge-tree --write-tree); upgrade git or set mode = \"shared\"", path=path,
                          key="workspace.mode")
    repo = repo_path(config)
    inside = git(["rev-parse", "--is-bare-repository"], cwd=repo, check=False) if repo.is_dir() else None
    if inside is None or inside.returncode != 0:
        raise ConfigError(f"{str(repo)!r} is not a git repository; run `git init` there or point "
                          "[workspace] repo at one", path=path, key="workspace.repo")
    if inside.out == "true":
        raise ConfigError(f"{str(repo)!r} is a bare repository; point [workspace] repo at a checkout",
                          path=path, key="workspace.repo")
    if rev(repo, f"refs/heads/{ws.target}") is None:
        raise ConfigError(f"branch {ws.target!r} does not exist in {str(repo)!r}; create it "
                          f"(git branch {ws.target}) or set [workspace] target", path=path, key="workspace.target")
    if not config.state_dir.resolve().is_relative_to(config.root.resolve()):
        raise ConfigError("worktree mode keeps worktrees in the state dir, which must be inside the fleet root; "
                          "set [fleet] state_dir to a relative folder such as \".coordinator\"", path=path,
                          key="fleet.state_dir")
