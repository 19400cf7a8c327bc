"""The life of one claim's git worktree: create, commit, precheck, candidate, gate, move the ref, clean up.

Each step is one small function over ``gitrepo.git`` (docs/workspaces.md has the
whole lifecycle). The worktree of task T at epoch E is
``<state>/worktrees/T-eE`` on branch ``coordinator/T/eE``; its gate worktree is
``T-eE.gate``. Names carry the epoch, so ``gc`` can tell a live claim's worktree
from an orphan's with one store read. Nothing here deletes unlanded work: a
worktree is removed only after its changes are committed and, unless landed,
kept under ``refs/coordinator/salvage/T/E``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import read_json, write_json_atomic
from ..config import FleetConfig
from ..errors import GitError
from ..paths import confine
from ..runners.process import run_process
from . import spares
from .gitrepo import git, repo_lock, repo_path, rev, worktree_list
from .workspace import read_tail

NAME = re.compile(r"^(?P<task>.+)-e(?P<epoch>\d+)(?P<gate>\.gate)?$")
GATE_TAIL_BYTES = 4 * 1024
SALVAGE_REF = "refs/coordinator/salvage"


@dataclass
class Workspace:
    """One claim's worktree: where it is, its branch, the commit it started from, and its tip."""

    repo: Path
    path: Path
    branch: str
    base: str
    task: str
    epoch: int
    tip: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    copied: list[str] = field(default_factory=list)  # ``copy`` files (.env, …): never committed
    spare: Path | None = None  # where the agent parks this worktree for its next claim (spares.py)

    def fields(self) -> dict[str, str | None]:
        """What the task record keeps of it."""
        return {"base": self.base, "branch": self.branch, "tip": self.tip}


@dataclass(frozen=True)
class Merge:
    """``git merge-tree --write-tree`` of the target and a tip: the tree, or the conflicted paths."""

    tree: str
    conflicts: list[str]
    messages: str


def worktrees_dir(config: FleetConfig) -> Path:
    """Where every worktree of this fleet lives."""
    return config.state_dir.resolve() / "worktrees"


def branch_name(task_id: str, epoch: int) -> str:
    """The branch of one claim."""
    return f"coordinator/{task_id}/e{epoch}"


def identity(repo: Path) -> list[str]:
    """``-c user.name/email`` when the repository has no committer identity (a CI box, a test)."""
    if git(["config", "user.email"], cwd=repo, check=False).returncode == 0:
        return []
    return ["-c", "user.name=coordinator", "-c", "user.email=coordinator@localhost"]


def exclude_state(config: FleetConfig, repo: Path) -> None:
    """Add the state dir to ``.git/info/exclude``, so the primary checkout never sees the worktrees."""
    state = config.state_dir.resolve()
    if not state.is_relative_to(repo):
        return
    line = "/" + state.relative_to(repo).as_posix() + "/"
    path = Path(git(["rev-parse", "--git-path", "info/exclude"], cwd=repo).out)
    path = path if path.is_absolute() else repo / path
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if line not in text.splitlines():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + ("" if not text or text.endswith("\n") else "\n") + line + "\n", encoding="utf-8")


def create(config: FleetConfig, task_id: str, epoch: int, *, agent: str | None = None) -> Workspace:
    """A worktree and branch at the target's current commit (under the repository lock), then ``copy``.

    With an ``agent``, its spare from the last claim is reused when there is one (spares.py).
    """
    repo = repo_path(config)
    target = config.workspace.target
    path, branch = worktrees_dir(config) / f"{task_id}-e{epoch}", branch_name(task_id, epoch)
    spare = spares.spare_path(worktrees_dir(config), agent) if agent is not None else None
    with repo_lock(repo):
        base = rev(repo, f"refs/heads/{target}")
        if base is None:
            raise GitError(["git", "rev-parse", target], 128, f"branch {target!r} is gone from {repo}")
        exclude_state(config, repo)
        path.parent.mkdir(parents=True, exist_ok=True)
        reused = spares.take(repo, spare, path)
        if reused:
            git(["branch", "--no-track", branch, base], cwd=repo)
        else:
            git(["worktree", "add", "--quiet", "--no-checkout", "--no-track", "-b", branch, str(path), base],
                cwd=repo)
    if reused:
        spares.refresh(path, branch=branch)
    else:
        populate(path)
    copied = copy_files(config, repo, path)
    return Workspace(repo=repo, path=path, branch=branch, base=base, task=task_id, epoch=epoch, copied=copied,
                     spare=spare)


def populate(path: Path) -> None:
    """Check out a worktree added with ``--no-checkout``, outside the repository lock.

    Only ``worktree add`` itself races on git's shared files; writing the files and
    the worktree's own index does not, so eight agents check out in parallel instead
    of queueing behind one lock for the whole checkout (scripts/bench_workspace.py).
    ``read-tree -u --reset`` (filters applied, as in a checkout) measured faster here
    than ``reset --hard``, which is slower than a plain ``worktree add``.
    """
    git(["read-tree", "-u", "--reset", "HEAD"], cwd=path)


def copy_sources(config: FleetConfig, repo: Path) -> list[Path]:
    """The primary checkout's files that the ``copy`` globs name (untracked files such as ``.env``)."""
    sources = []
    for pattern in config.workspace.copy_globs:
        for match in sorted(glob.glob(pattern, root_dir=repo, recursive=True)):
            source = confine(repo, match, what="workspace.copy")
            if source.is_file():
                sources.append(source)
    return sources


def copy_files(config: FleetConfig, repo: Path, path: Path) -> list[str]:
    """Copy the ``copy`` files from the primary checkout into the worktree; their paths."""
    copied = []
    for source in copy_sources(config, repo):
        dest = path / source.relative_to(repo)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
        copied.append(source.relative_to(repo).as_posix())
    return copied


def run_setup(config: FleetConfig, ws: Workspace, *, env: Mapping[str, str], log: Path,
              should_stop: Callable[[], str | None]) -> str | None:
    """Run ``setup`` in the new worktree; None when it passes, else why not."""
    argv = config.workspace.setup
    if not argv:
        return None
    result = run_process(argv, cwd=ws.path, env=env, stdout=log, stderr=log,
                         timeout_s=config.workspace.gate_timeout_s, should_stop=should_stop)
    return None if result.ok else f"workspace setup {argv[0]!r} {result.describe()} (see {log.name})"


def commit_all(ws: Workspace, message: str, *, hooks: bool = True) -> str:
    """Commit every change left in the worktree but the ``copy`` files (hooks on, unless salvaging); the new tip.

    A copied ``.env`` is the user's, often a secret: it must never ride a landing onto the target.
    """
    git(["add", "-A", "--", ".", *(f":(exclude,literal){name}" for name in ws.copied)], cwd=ws.path)
    if git(["diff", "--cached", "--quiet"], cwd=ws.path, check=False).returncode != 0:
        verify = [] if hooks else ["--no-verify"]
        git([*identity(ws.repo), "commit", "--quiet", *verify, "-m", message], cwd=ws.path)
    ws.tip = git(["rev-parse", "HEAD"], cwd=ws.path).out
    return ws.tip


def precheck(repo: Path, target_commit: str, tip: str) -> Merge:
    """Merge without touching any checkout (``merge-tree --write-tree``); exit 1 means conflicts."""
    result = git(["merge-tree", "--write-tree", "--name-only", target_commit, tip], cwd=repo, check=False)
    if result.returncode not in (0, 1):
        raise GitError(["git", "merge-tree", target_commit, tip], result.returncode, result.stderr)
    head, _, messages = result.stdout.partition("\n\n")
    lines = head.splitlines()
    conflicts = list(dict.fromkeys(lines[1:])) if result.returncode == 1 else []
    return Merge(tree=lines[0], conflicts=conflicts, messages=messages.strip())


def candidate(config: FleetConfig, repo: Path, merge: Merge, target_commit: str, tip: str, message: str) -> str:
    """The commit that would land: the merged tree on the target (and the tip too, for ``merge``)."""
    parents = ["-p", target_commit] + (["-p", tip] if config.workspace.land == "merge" else [])
    return git([*identity(repo), "commit-tree", merge.tree, *parents, "-m", message], cwd=repo).out


def gate(config: FleetConfig, ws: Workspace, commit: str, tree: str, *, env: Mapping[str, str], log: Path,
         should_stop: Callable[[], str | None], on_spawn: Callable[[int], None] | None) -> tuple[bool, str]:
    """Run ``gates`` on the candidate in a detached gate worktree; (passed, output tail), cached by tree."""
    gates = config.workspace.gates
    if not gates:
        return True, ""
    key = hashlib.sha256(json.dumps([tree, gates]).encode()).hexdigest()[:32]
    cache = config.state_dir / "gates" / f"{key}.json"
    cached = read_json(cache)
    if isinstance(cached, dict) and "ok" in cached:
        return bool(cached["ok"]), str(cached.get("tail", ""))
    path = prepare_gate(ws, commit)
    ok = all(run_process(argv, cwd=path, env=env, stdout=log, stderr=log, timeout_s=config.workspace.gate_timeout_s,
                         should_stop=should_stop, on_spawn=on_spawn).ok for argv in gates)
    tail = read_tail(log, GATE_TAIL_BYTES)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache, {"ok": ok, "tail": tail, "tree": tree})
    return ok, tail


def gate_path(ws: Workspace) -> Path:
    """The claim's gate worktree, beside its own."""
    return ws.path.with_name(ws.path.name + ".gate")


def prepare_gate(ws: Workspace, commit: str) -> Path:
    """The claim's gate worktree, detached at ``commit``: checked out once per claim, then moved along.

    Every landing moves the target, so a waiting candidate is merged and gated
    again; moving one gate worktree writes only the files that changed, where a
    new one writes the whole repository (docs/performance.md, "Workspaces").
    ``clean -fdx`` leaves nothing of the last gate run behind. ``close`` removes it.
    """
    path = gate_path(ws)
    if not (path / ".git").exists():
        with repo_lock(ws.repo):
            reused = spares.take(ws.repo, spares.gate_spare(ws.spare) if ws.spare else None, path)
            if not reused:
                git(["worktree", "add", "--quiet", "--no-checkout", "--detach", str(path), commit], cwd=ws.repo)
        if not reused:
            populate(path)
            return path
    spares.refresh(path, commit=commit)
    return path


def release(ws: Workspace, *, landed: bool) -> bool:
    """Park the worktree and its gate worktree as the agent's spares, or remove them; the landed branch goes.

    The caller has saved the work (landed, or under a salvage ref). A worktree
    whose ``status`` still shows a change (a commit that failed) is kept where it
    is, never deleted: False, and ``gc`` tries again.
    """
    gate, branch = gate_path(ws), ws.branch if landed else None
    if gate.exists() and (ws.spare is None or not spares.park(ws.repo, gate, spares.gate_spare(ws.spare))):
        remove_worktree(ws.repo, gate)
    if not spares.is_clean(ws.path, ws.copied):
        return False
    if ws.spare is None or not spares.park(ws.repo, ws.path, ws.spare, branch=branch):
        remove_worktree(ws.repo, ws.path, branch=branch)
    return True


def checkout_of(repo: Path, branch: str) -> Path | None:
    """The worktree that has ``branch`` checked out, if any."""
    path = None
    for line in worktree_list(repo).splitlines():
        if line.startswith("worktree "):
            path = Path(line[len("worktree "):])
        elif line == f"branch refs/heads/{branch}":
            return path
    return None


def move_target(repo: Path, target: str, new: str, old: str) -> tuple[str | None, str | None]:
    """Compare-and-swap the target from ``old`` to ``new``: (landed commit, None) or (None, why held).

    A target checked out in a worktree with changes to tracked files is held (the
    user's work is never touched); a clean one is fast-forwarded, which moves its
    files and the ref together. (None, None) means the target moved: merge again.
    """
    checkout = checkout_of(repo, target)
    if checkout is None:
        result = git(["update-ref", "-m", "coordinator: land", f"refs/heads/{target}", new, old], cwd=repo,
                     check=False)
        if result.returncode == 0:
            return new, None
        if rev(repo, f"refs/heads/{target}") != old:
            return None, None
        raise GitError(["git", "update-ref", target], result.returncode, result.stderr)
    dirty = git(["status", "--porcelain", "--untracked-files=no"], cwd=checkout).out
    if dirty:
        files = ", ".join(line[3:] for line in dirty.splitlines()[:3])
        return None, (f"{checkout} has {target} checked out with uncommitted changes ({files}); "
                      "commit or stash them and the landing proceeds")
    if rev(checkout, "HEAD") != old:
        return None, None
    result = git(["merge", "--ff-only", "--quiet", new], cwd=checkout, check=False)
    if result.returncode == 0:
        return new, None
    last = (result.stderr.strip().splitlines() or ["merge --ff-only failed"])[-1]
    return None, f"cannot fast-forward {checkout}: {last}; clean it and the landing proceeds"


def discard_spares(config: FleetConfig, agent: str, warn: Callable[[str], None]) -> None:
    """Delete an agent's spares as it stops: a stopped fleet leaves no checkout behind."""
    if config.workspace.mode != "worktree":
        return
    root = worktrees_dir(config)
    spare = spares.spare_path(root, agent)
    for path in (spare, spares.gate_spare(spare)):
        try:
            if path.exists():
                spares.discard(repo_path(config), path, root / ".discard" / path.name)
        except (GitError, OSError) as exc:
            warn(f"{exc}; `coordinator gc` removes the spare worktree {path}")


def remove_worktree(repo: Path, path: Path, *, branch: str | None = None) -> None:
    """Remove a worktree git knows (its changes must be saved first), and its landed ``branch``.

    The files go first, outside the repository lock (they are this worktree's alone);
    then, under the lock, ``prune`` drops git's record of it, since its folder is gone.
    """
    shutil.rmtree(path, ignore_errors=True)
    with repo_lock(repo):
        git(["worktree", "prune"], cwd=repo, check=False)
        if branch is not None:
            git(["branch", "-D", "--quiet", branch], cwd=repo)


def salvage(ws: Workspace, message: str) -> str | None:
    """Save what the worktree holds beyond its base under ``refs/coordinator/salvage/T/E``; the ref, if any."""
    if ws.path.exists():
        try:
            commit_all(ws, message, hooks=False)
        except GitError:
            pass  # a half-written index (killed mid-commit): what the branch holds is still saved below
    tip = rev(ws.repo, f"refs/heads/{ws.branch}")
    ws.tip = tip or ws.tip
    if tip is None or tip == ws.base:
        return None
    ref = f"{SALVAGE_REF}/{ws.task}/{ws.epoch}"
    git(["update-ref", ref, tip], cwd=ws.repo)
    return ref


def delete_branch(repo: Path, branch: str) -> None:
    """Delete a branch whose work has landed, under the repository lock (ref updates race too)."""
    with repo_lock(repo):
        git(["branch", "-D", "--quiet", branch], cwd=repo)


def diff_text(repo: Path, base: str, tip: str, limit: int) -> str:
    """``git diff base tip``, cut at ``limit`` characters."""
    text = git(["diff", "--stat", "-p", base, tip], cwd=repo, check=False).stdout
    return text if len(text) <= limit else text[:limit] + "\n… (cut)\n"


def log_text(repo: Path, base: str, target_commit: str, paths: list[str], limit: int) -> str:
    """``git log base..target -- paths``: what landed on the same paths since this attempt began."""
    text = git(["log", "--format=%h %s (%an)", f"{base}..{target_commit}", "--", *paths], cwd=repo,
               check=False).stdout
    return text[:limit]
