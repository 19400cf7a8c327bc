"""Helpers for the workspace tests: a fleet root that is a real git repository, and git reads."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from tests.procs import start_agent

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo: Path, *args: str, check: bool = True) -> str:
    """Run git in ``repo``; its stdout, stripped."""
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {result.stderr}")
    return result.stdout.strip()


def make_repo_fleet(root: Path, script: str, *, workspace: str = "", fleet: str = "",
                    files: dict[str, str] | None = None) -> Path:
    """A git repository (branch main, one commit) that is also a fleet root with a `sh` command agent.

    ``script`` is the agent's shell script, run as ``sh agent.sh TASK_ID`` in its worktree.
    """
    (root / "tasks").mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "t@t")
    git(root, "config", "user.name", "t")
    for name, text in {"README": "hello\n", **(files or {})}.items():
        (root / name).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    (root / "agent.sh").write_text(textwrap.dedent(script))
    (root / "fleet.toml").write_text(textwrap.dedent(f"""
        [fleet]
        default_agent = "sh"
        heartbeat_s = 0.3
        {textwrap.dedent(fleet)}
        [workspace]
        mode = "worktree"
        {textwrap.dedent(workspace)}
        [agents.sh]
        kind = "command"
        command = ["sh", "{root / 'agent.sh'}", "{{task_id}}"]
        """))
    return root


def add_tasks(root: Path, ids: list[str], **keys: str) -> None:
    """One task file per id (extra top-level keys as TOML values)."""
    for task_id in ids:
        extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
        (root / "tasks" / f"{task_id}.toml").write_text(f'prompt = "work on {task_id}"\n{extra}')


def run_agents(root: Path, count: int, *, timeout: float = 60) -> None:
    """``count`` real ``coordinator agent --until-empty`` processes, waited for."""
    procs = [start_agent(root, f"a{n}", "--until-empty") for n in range(count)]
    for proc in procs:
        proc.wait(timeout=timeout)


def first_parent(repo: Path, branch: str = "main") -> list[str]:
    """Subjects of the first-parent history of ``branch``, newest first."""
    return git(repo, "log", "--first-parent", "--format=%s", branch).splitlines()


def worktrees(repo: Path) -> list[str]:
    """Paths of every worktree git knows."""
    return [line.split(" ", 1)[1] for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def branches(repo: Path, pattern: str = "coordinator/") -> list[str]:
    """Branch names under ``refs/heads/<pattern>``."""
    return git(repo, "for-each-ref", "--format=%(refname:short)", f"refs/heads/{pattern}").splitlines()
