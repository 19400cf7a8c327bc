"""Bad task files never stop the others: each is one line naming file, line, field and fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bad_cases import (BAD_CASES, BLOCKED_CASES, GOOD_IDS, GOOD_TASKS, SPECIAL_CASES, write_bad_fleet, write_case,
                       write_special)
from coordinator.config import FleetConfig
from coordinator.tasks import TaskSet, load_tasks


def fleet_with(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    for name, content in GOOD_TASKS.items():
        write_case(root, name, content)
    return root


def assert_one_line(message: str, source: str) -> None:
    shown = source.replace("\n", "\\n")  # line breaks in names are escaped in messages
    assert message.startswith(shown + ":"), message
    assert "\n" not in message and "\r" not in message, message
    assert "Traceback" not in message, message


def assert_good_tasks_intact(taskset: TaskSet) -> None:
    for task_id in GOOD_IDS:
        assert task_id in taskset.tasks, f"{task_id} missing: {taskset.invalid}"
        assert task_id not in taskset.blocked


def test_cases_are_many_and_distinct() -> None:
    names = [name for name, _, _ in BAD_CASES + BLOCKED_CASES] + [name for name, _ in SPECIAL_CASES]
    assert len(names) == len(set(names))
    assert len(BAD_CASES) >= 25


@pytest.mark.parametrize(("name", "content", "expected"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_file_is_reported_alone(tmp_path: Path, name: str, content: bytes | str, expected: str) -> None:
    root = fleet_with(tmp_path)
    write_case(root, name, content)
    taskset = load_tasks(FleetConfig(root=root))
    source = f"tasks/{name}"
    errors = [bad for bad in taskset.invalid if bad.path == source]
    assert errors, f"{name} not reported; invalid = {taskset.invalid}"
    assert any(expected in bad.error for bad in errors), [bad.error for bad in errors]
    for bad in errors:
        assert_one_line(bad.error, source)
    assert_good_tasks_intact(taskset)


@pytest.mark.parametrize(("name", "content", "expected"), BLOCKED_CASES, ids=[c[0] for c in BLOCKED_CASES])
def test_unrunnable_dependency_blocks(tmp_path: Path, name: str, content: bytes | str, expected: str) -> None:
    root = fleet_with(tmp_path)
    write_case(root, name, content)
    taskset = load_tasks(FleetConfig(root=root))
    mine = [task_id for task_id, task in taskset.tasks.items() if task.source == f"tasks/{name}"]
    reasons = [taskset.blocked[task_id] for task_id in mine if task_id in taskset.blocked]
    assert any(expected in reason for reason in reasons), (reasons, taskset.invalid)
    assert all("\n" not in reason for reason in reasons)
    assert_good_tasks_intact(taskset)


@pytest.mark.parametrize(("name", "expected"), SPECIAL_CASES, ids=[c[0] for c in SPECIAL_CASES])
def test_filesystem_oddity_is_reported(tmp_path: Path, name: str, expected: str) -> None:
    root = fleet_with(tmp_path)
    write_special(root, name, tmp_path / "outside")
    taskset = load_tasks(FleetConfig(root=root))
    errors = [bad for bad in taskset.invalid if bad.path == f"tasks/{name}"]
    assert any(expected in bad.error for bad in errors), taskset.invalid
    for bad in errors:
        assert_one_line(bad.error, f"tasks/{name}")
    assert_good_tasks_intact(taskset)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    root = fleet_with(tmp_path)
    path = write_case(root, "locked.toml", 'prompt = "x"\n')
    path.chmod(0)
    taskset = load_tasks(FleetConfig(root=root))
    assert any("cannot read it" in bad.error for bad in taskset.invalid if bad.path == "tasks/locked.toml")
    assert_good_tasks_intact(taskset)


def test_all_bad_cases_together(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    write_bad_fleet(root, tmp_path / "outside")
    taskset = load_tasks(FleetConfig(root=root))
    assert_good_tasks_intact(taskset)
    for name, _, expected in BAD_CASES:
        errors = [bad.error for bad in taskset.invalid if bad.path == f"tasks/{name}"]
        assert any(expected in error for error in errors), (name, errors)
    for name, expected in SPECIAL_CASES:
        assert any(expected in bad.error for bad in taskset.invalid if bad.path == f"tasks/{name}"), name
    assert any("not a known task" in reason for reason in taskset.blocked.values())
    for bad in taskset.invalid:
        assert_one_line(bad.error, bad.path)
    assert "sibling-ok" in taskset.tasks  # a bad task does not take its valid siblings down


def test_error_fields_are_structured(tmp_path: Path) -> None:
    root = fleet_with(tmp_path)
    write_case(root, "priority-negative.toml", 'prompt = "x"\npriority = -1\n')
    bad = next(b for b in load_tasks(FleetConfig(root=root)).invalid if b.path == "tasks/priority-negative.toml")
    assert (bad.line, bad.field, bad.task_id) == (2, "priority", "priority-negative")
    assert bad.error.startswith("tasks/priority-negative.toml:2: priority: ")
