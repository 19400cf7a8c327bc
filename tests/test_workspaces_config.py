"""``[workspace]`` checked when a command that needs it starts: one line, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from coordinator.config import FleetConfig
from tests.conftest import subprocess_env
from tests.procs import record, run_cli
from tests.ws_support import add_tasks, git, make_repo_fleet

FLEET = """
[fleet]
{fleet}
[workspace]
mode = "worktree"
{workspace}
"""


def fleet_in(root: Path, *, fleet: str = "", workspace: str = "") -> Path:
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "fleet.toml").write_text(FLEET.format(fleet=fleet, workspace=workspace))
    return root


def a_repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "init")
    return root


def old_git_env(tmp_path: Path) -> dict[str, str]:
    """PATH with a `git` that says it is 2.30 first."""
    bin_dir = tmp_path / "oldgit"
    bin_dir.mkdir()
    fake = bin_dir / "git"
    fake.write_text('#!/bin/sh\necho "git version 2.30.1"\n')
    fake.chmod(0o755)
    return subprocess_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


CASES = {
    "not a repository": (lambda t: fleet_in(t / "plain"), "is not a git repository"),
    "missing target": (lambda t: fleet_in(a_repo(t / "r"), workspace='target = "trunk"'),
                       "branch 'trunk' does not exist"),
    "bare repository": (lambda t: (subprocess.run(["git", "init", "-q", "--bare", str(t / "f" / "bare.git")],
                                                  check=True), fleet_in(t / "f", workspace='repo = "bare.git"'))[1],
                        "is a bare repository"),
    "state dir outside the root": (lambda t: fleet_in(a_repo(t / "r"), fleet='state_dir = "../elsewhere"'),
                                   "state dir, which must be inside the fleet root"),
}


@pytest.mark.parametrize("command", [["agent", "--until-empty"], ["run", "--until-empty", "--no-dashboard"], ["gc"]])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_workspace_is_one_line_and_exit_2(tmp_path: Path, case: str, command: list[str]) -> None:
    build, message = CASES[case]
    result = run_cli(build(tmp_path), *command)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_git_older_than_2_38_is_refused(tmp_path: Path) -> None:
    root = fleet_in(a_repo(tmp_path / "r"))
    result = run_cli(root, "agent", "--until-empty", env=old_git_env(tmp_path))
    assert result.returncode == 2 and "older than 2.38" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_values_name_the_key() -> None:
    with pytest.raises(ValueError, match="argv"):
        FleetConfig(workspace={"gates": [[]]})
    with pytest.raises(ValueError):
        FleetConfig(workspace={"land": "rebase"})
    assert FleetConfig(workspace={"copy": [".env"]}).workspace.copy_globs == [".env"]


def test_a_shared_agent_works_in_the_primary_checkout(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", 'echo "$1 ${COORDINATOR_WORKTREE:-none}" > "review-$1.txt"\n')
    with open(root / "fleet.toml", "a") as fh:
        fh.write('\n[agents.review]\nkind = "command"\nworkspace = "shared"\n'
                 f'command = ["sh", "{root / "agent.sh"}", "{{task_id}}"]\n')
    add_tasks(root, ["r1"], agent='"review"')
    result = run_cli(root, "agent", "--until-empty")
    assert result.returncode == 0, result.stderr
    assert (root / "review-r1.txt").read_text() == "r1 none\n"  # no worktree: the primary checkout itself
    assert record(root, "r1")["branch"] is None
