"""``coordinator gc``: remove the worktrees no live claim owns, and the branches that landed.

An orphan is a worktree whose claim is gone, was taken over, or went stale (a
killed agent, a reclaimed one, a crash between landing and cleanup). Its work is
committed (hooks off) and kept under ``refs/coordinator/salvage/<task>/<epoch>``
before the worktree goes; a branch is deleted only when its record says it
landed. Unlanded commits are never deleted. Agents call ``collect`` for the
tasks they just reclaimed, so a takeover salvages the old worktree at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..config import FleetConfig
from ..errors import CoordinatorError
from ..queue.claims import stale_reason
from ..store import Store
from . import spares
from . import worktrees as wt
from .gitrepo import git, repo_path, rev, worktree_list


def collect(config: FleetConfig, store: Store, *, only: set[str] | None = None,
            dry_run: bool = False) -> dict[str, Any]:
    """Salvage and remove orphaned worktrees, delete landed branches, prune; what was (or would be) done."""
    repo = repo_path(config)
    report: dict[str, Any] = {"removed": [], "salvaged": [], "branches_deleted": [], "kept": [], "spares_removed": [],
                              "dry_run": dry_run}
    root = wt.worktrees_dir(config)
    for path in registered(repo, root):
        found = wt.NAME.match(path.name)
        if found is None or (only is not None and found["task"] not in only):
            continue
        task, epoch = found["task"], int(found["epoch"])
        if is_live(store, task, epoch):
            report["kept"].append(str(path))
            continue
        report["removed"].append(str(path))
        if dry_run:
            continue
        if found["gate"]:
            wt.remove_worktree(repo, path)
            continue
        copied = [source.relative_to(repo).as_posix() for source in wt.copy_sources(config, repo)]
        salvage_one(store, repo, config.workspace.target, path, (task, epoch), report, copied=copied)
    if only is None:
        remove_spares(repo, root, report, dry_run)
        delete_landed_branches(store, repo, report, dry_run)
        if not dry_run:
            git(["worktree", "prune"], cwd=repo, check=False)
    return report


def salvage_reclaimed(config: FleetConfig, store: Store, task_ids: Iterable[str], warn: Callable[[str], None]) -> None:
    """After a takeover (agent or supervisor): the old worktrees' work goes to salvage before anything else."""
    only = set(task_ids)
    if not only or config.workspace.mode != "worktree":
        return
    try:
        collect(config, store, only=only)
    except (CoordinatorError, OSError) as exc:
        warn(f"{exc}; run `coordinator gc` to salvage the reclaimed worktrees")


def remove_spares(repo: Path, root: Path, report: dict[str, Any], dry_run: bool) -> None:
    """Delete the agents' parked worktrees (they hold nothing; an agent makes a new one when it needs it)."""
    for spare in spares.spares(root):
        if dry_run or spares.discard(repo, spare, root / ".discard" / spare.name):
            report["spares_removed"].append(str(spare))


def registered(repo: Path, root: Path) -> list[Path]:
    """The worktrees git knows under ``root``."""
    out = worktree_list(repo)
    paths = [Path(line[len("worktree "):]) for line in out.splitlines() if line.startswith("worktree ")]
    return [p for p in paths if p.parent == root]


def is_live(store: Store, task: str, epoch: int) -> bool:
    """Whether a live (not stale) claim owns the worktree of ``task`` at ``epoch``."""
    claim = store.read_claim(task)
    return claim is not None and claim.epoch == epoch and stale_reason(claim, store.now()) is None


def salvage_one(store: Store, repo: Path, target: str, path: Path, claim: tuple[str, int],
                report: dict[str, Any], *, copied: list[str] | None = None) -> None:
    """Save an orphan's work (committed and uncommitted) under a salvage ref, then remove its worktree.

    A worktree whose changes could not be committed (an ``index.lock`` left by a
    killed ``git commit``) is kept, never deleted, and reported as kept.
    """
    task, epoch = claim
    branch = wt.branch_name(task, epoch)
    record = store.read_record(task)
    landed = record is not None and record.landed is not None and record.branch == branch
    base = (record.base if record and record.branch == branch else None) or merge_base(repo, target, branch)
    ws = wt.Workspace(repo=repo, path=path, branch=branch, base=base or "", task=task, epoch=epoch,
                      copied=copied or [])
    ref = None if landed else wt.salvage(ws, f"salvage: {task} at epoch {epoch} (orphaned worktree)")
    if ref is not None:
        report["salvaged"].append({"task": task, "epoch": epoch, "ref": ref, "commit": ws.tip})
        store.append_event("salvaged", task=task, epoch=epoch, ref=ref, commit=ws.tip)
    if not wt.release(ws, landed=False):
        report["removed"].remove(str(path))
        report["kept"].append(str(path))
    if landed:
        wt.delete_branch(repo, branch)
        report["branches_deleted"].append(branch)


def merge_base(repo: Path, target: str, branch: str) -> str | None:
    """Where an orphan's branch left the target (its base)."""
    result = git(["merge-base", f"refs/heads/{target}", f"refs/heads/{branch}"], cwd=repo, check=False)
    return result.out or None


def delete_landed_branches(store: Store, repo: Path, report: dict[str, Any], dry_run: bool) -> None:
    """Delete ``coordinator/*`` branches without a worktree whose record says they landed."""
    out = git(["for-each-ref", "--format=%(refname:short)", "refs/heads/coordinator/"], cwd=repo).out
    checked_out = worktree_list(repo)
    for branch in out.splitlines():
        if f"branch refs/heads/{branch}" in checked_out.splitlines():
            continue
        task = branch.split("/")[1] if branch.count("/") >= 2 else ""
        record = store.read_record(task)
        if record is None or record.landed is None or record.branch != branch or rev(repo, branch) is None:
            continue
        report["branches_deleted"].append(branch)
        if not dry_run:
            wt.delete_branch(repo, branch)
