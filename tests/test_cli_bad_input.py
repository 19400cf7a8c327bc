"""Every bad task file at once, through the real CLI: reported one line each, and the good tasks still run.

The fleet holds every case of ``tests/bad_cases.py`` (bad contents, blocked
dependencies, and filesystem oddities such as a FIFO, a folder, a dangling
symlink and symlinks out of the root) beside valid tasks run by a ``true``
command agent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.config import load_config
from coordinator.tasks import load_tasks
from tests.bad_cases import BAD_CASES, BLOCKED_CASES, GOOD_IDS, SPECIAL_CASES, write_bad_fleet
from tests.procs import record, run_cli

FLEET = """
[fleet]
default_agent = "ok"
heartbeat_s = 0.2

[agents.ok]
kind = "command"
command = ["true"]
"""

BAD_FILES = [f"tasks/{name}" for name, _, _ in BAD_CASES] + [f"tasks/{name}" for name, _ in SPECIAL_CASES]


def shown(path: str) -> str:
    """How a path appears in messages: line breaks escaped."""
    return path.replace("\n", "\\n")


@pytest.fixture
def bad_fleet(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    write_bad_fleet(root, tmp_path / "outside")
    (root / "fleet.toml").write_text(FLEET)
    return root


def assert_no_traceback(result) -> None:  # noqa: ANN001  (CompletedProcess)
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr, result.stderr


def test_validate_reports_every_bad_file_on_its_own_line(bad_fleet: Path) -> None:
    result = run_cli(bad_fleet, "validate")
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert all(line.startswith(("invalid: tasks/", "blocked: ")) for line in lines[:-1]), lines
    assert lines[-1].endswith(" invalid") and "valid task(s)" in lines[-1]
    invalid_lines = [line for line in lines if line.startswith("invalid: ")]
    for path in BAD_FILES:
        mine = [line for line in invalid_lines if line.startswith(f"invalid: {shown(path)}:")]
        assert mine, f"{path!r} not named in: {invalid_lines}"
    for name, _, expected in BAD_CASES:
        assert any(expected in line for line in invalid_lines if f"tasks/{name}:" in line), (name, expected)
    for name, expected in SPECIAL_CASES:
        assert any(expected in line for line in invalid_lines), (name, expected)
    blocked_lines = [line for line in lines if line.startswith("blocked: ")]
    for _, _, expected in BLOCKED_CASES:
        assert any(expected in line for line in blocked_lines), expected
    assert not any(line.startswith(f"invalid: tasks/{name}") for line in invalid_lines for name in
                   ("good-one.toml", "good-two.toml", "sub/good-three.toml"))


def test_validate_json_lists_each_bad_file(bad_fleet: Path) -> None:
    result = run_cli(bad_fleet, "validate", "--json")
    assert result.returncode == 2
    assert_no_traceback(result)
    data = json.loads(result.stdout)
    paths = {entry["path"] for entry in data["invalid"]}
    assert set(BAD_FILES) <= paths, set(BAD_FILES) - paths
    # needs-invalid.toml holds an invalid task ("broken") beside the one it blocks.
    assert paths <= set(BAD_FILES) | {"tasks/needs-invalid.toml"}, "only the bad files are invalid"
    for entry in data["invalid"]:
        assert set(entry) == {"path", "line", "field", "error", "id", "problems"}
        assert entry["problems"][0] == {k: entry[k] for k in ("path", "line", "field", "error")}
        assert entry["error"].startswith(shown(entry["path"]) + ":") and "\n" not in entry["error"]
    cases = {f"tasks/{name}": expected for name, _, expected in BAD_CASES}
    for path, expected in cases.items():
        assert any(expected in e["error"] for e in data["invalid"] if e["path"] == path), path
    assert {"needs-unknown", "needs-broken", "chain-a", "chain-b"} <= {b["id"] for b in data["blocked"]}
    assert data["valid"] == len(load_tasks(load_config(bad_fleet)).tasks)


def test_agent_runs_every_valid_task_and_status_lists_the_invalid_files(bad_fleet: Path) -> None:
    taskset = load_tasks(load_config(bad_fleet))
    runnable = sorted(set(taskset.tasks) - set(taskset.blocked))
    assert set(GOOD_IDS) | {"sibling-ok"} <= set(runnable)

    agent = run_cli(bad_fleet, "agent", "--id", "survivor", "--until-empty", timeout=90)
    assert agent.returncode == 1, "invalid and blocked tasks are failed work, as for `run`"
    assert_no_traceback(agent)
    assert {task_id: record(bad_fleet, task_id)["state"] for task_id in runnable} == dict.fromkeys(runnable, "done")
    records = {p.stem for p in (bad_fleet / ".coordinator" / "records").glob("*.json")}
    assert records == set(runnable), "no invalid or blocked task was run"

    status = run_cli(bad_fleet, "status", "--json")
    assert status.returncode == 0
    assert_no_traceback(status)
    report = json.loads(status.stdout)
    listed = {entry["path"] for entry in report["invalid_files"]}
    assert set(BAD_FILES) <= listed, set(BAD_FILES) - listed
    assert report["tasks"]["done"] == len(runnable) and report["tasks"]["running"] == 0
    assert report["tasks"]["blocked"] == len(taskset.blocked)
    assert report["healthy"] is False and "invalid task file(s)" in report["problems"][0]

    text = run_cli(bad_fleet, "status")
    assert_no_traceback(text)
    assert text.stdout.splitlines()[-1].startswith("unhealthy: ")
    assert "invalid: tasks/array-no-id.toml:1: tasks[0].id: is required" in text.stdout
