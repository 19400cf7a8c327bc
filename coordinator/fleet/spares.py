"""Spare checkouts: the clean worktree (and gate worktree) an agent reuses from one claim to the next.

Checking a repository out writes every file and removing it deletes every file:
on a 10,000-file repository that was nearly all of a claim's workspace cost, and
on ext4 without a journal (as on the benchmark machines) creating thousands of
inodes right after deleting thousands goes quadratic in the kernel
(docs/performance.md, "Workspaces"). So a finished worktree whose work is safe
(landed, or kept under a salvage ref, and ``git status`` clean) is parked under
``<state>/worktrees/.spare/<agent>`` instead of deleted, and the agent's next
claim moves it into place with ``git worktree move``, switches it to the new
branch (writing only the files that differ) and runs ``clean -ffdx``: the tree a
fresh ``worktree add`` gives, at the cost of a diff.

A spare holds nothing anyone needs. Parking and taking run under the repository
lock, so two agents, or an agent and ``gc``, never take the same one; a spare
that cannot be taken is deleted, and the caller checks out afresh.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .gitrepo import git, repo_lock

SPARE_DIR = ".spare"
GATE_SUFFIX = ".gate"


def spare_path(worktrees: Path, agent: str) -> Path:
    """Where ``agent`` parks its worktree (its gate worktree adds ``.gate``)."""
    return worktrees / SPARE_DIR / re.sub(r"[^A-Za-z0-9._-]", "_", agent)


def gate_spare(spare: Path) -> Path:
    """Where the agent parks its gate worktree."""
    return spare.with_name(spare.name + GATE_SUFFIX)


def take(repo: Path, spare: Path | None, dest: Path) -> bool:
    """Move the spare to ``dest`` (the caller holds the repository lock); False when there is none."""
    if spare is None or not (spare / ".git").is_file():
        return False
    if git(["worktree", "move", str(spare), str(dest)], cwd=repo, check=False).returncode == 0:
        return True
    shutil.rmtree(spare, ignore_errors=True)  # git no longer knows it: `worktree prune` drops the record
    return False


def refresh(path: Path, *, branch: str | None = None, commit: str | None = None) -> None:
    """Switch a taken spare to ``branch`` (or detach it at ``commit``) and remove every untracked file."""
    target = [branch] if branch is not None else ["--detach", str(commit)]
    git(["checkout", "--quiet", "--force", *target], cwd=path)
    git(["clean", "-ffdxq"], cwd=path)


def is_clean(path: Path, keep: list[str]) -> bool:
    """No change in the worktree but the ``keep`` paths (the ``copy`` files) and ignored files."""
    excludes = [f":(exclude,literal){name}" for name in keep]
    status = git(["status", "--porcelain", "--untracked-files=all", "--", ".", *excludes], cwd=path, check=False)
    return status.returncode == 0 and not status.out


def park(repo: Path, path: Path, spare: Path, *, branch: str | None = None) -> bool:
    """Detach ``path`` and move it to ``spare``, deleting its landed ``branch``; False when it cannot be parked.

    The caller has checked that nothing in it is unsaved; it removes the worktree itself on False.
    """
    if spare.exists() or git(["checkout", "--quiet", "--detach"], cwd=path, check=False).returncode != 0:
        return False
    spare.parent.mkdir(parents=True, exist_ok=True)
    with repo_lock(repo):
        if git(["worktree", "move", str(path), str(spare)], cwd=repo, check=False).returncode != 0:
            return False
        if branch is not None:
            git(["branch", "-D", "--quiet", branch], cwd=repo)
    return True


def spares(worktrees: Path) -> list[Path]:
    """Every parked worktree."""
    folder = worktrees / SPARE_DIR
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def discard(repo: Path, spare: Path, trash: Path) -> bool:
    """Take a spare out of use (under the lock) and delete it; False when an agent took it first."""
    trash.parent.mkdir(parents=True, exist_ok=True)
    with repo_lock(repo):
        taken = take(repo, spare, trash)
    if taken:
        shutil.rmtree(trash, ignore_errors=True)
    with repo_lock(repo):
        git(["worktree", "prune"], cwd=repo, check=False)
    return taken
