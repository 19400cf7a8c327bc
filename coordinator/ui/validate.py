"""Rendering what ``coordinator validate`` found: every problem on its own line, or one JSON document.

Plain text, no rich: a report meant for terminals, logs and editors' problem
matchers alike (``invalid: tasks/x.toml:3: priority: ...``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ..errors import ConfigError
from ..tasks import InvalidFile, TaskSet


def print_validation(taskset: TaskSet, warnings: list[InvalidFile], *, as_json: bool) -> None:
    """Every problem of every invalid task, the blocked tasks and the warnings; then a count."""
    if as_json:
        _write_json({"valid": len(taskset.tasks), "invalid": [_entry(bad) for bad in taskset.invalid],
                     "blocked": [{"id": k, "reason": v} for k, v in taskset.blocked.items()],
                     "warnings": [_problem(w) | {"id": w.task_id} for w in warnings], "config": []})
        return
    lines = [f"invalid: {problem.error}" for bad in taskset.invalid for problem in bad.problems()]
    lines += [f"blocked: {task_id}: {reason}" for task_id, reason in taskset.blocked.items()]
    lines += [f"warning: {warning.error}" for warning in warnings]
    lines.append(f"{len(taskset.tasks)} valid task(s), {len(taskset.invalid)} invalid")
    sys.stdout.write("\n".join(lines) + "\n")


def print_config_problems(problems: list[ConfigError], *, as_json: bool) -> int:
    """fleet.toml's problems, all of them (task files cannot be judged without it); returns the exit code."""
    if as_json:
        _write_json({"valid": 0, "invalid": [], "blocked": [], "warnings": [],
                     "config": [{"path": p.path, "line": p.line, "field": p.key, "error": str(p)} for p in problems]})
    else:
        sys.stderr.write("".join(f"error: {p}\n" for p in problems))
    return 2


def _entry(bad: InvalidFile) -> dict[str, Any]:
    """An invalid file or task: its first problem at the top (stable keys), and all of them in ``problems``."""
    return {**_problem(bad), "id": bad.task_id, "problems": [_problem(p) for p in bad.problems()]}


def _problem(bad: InvalidFile) -> dict[str, Any]:
    return {"path": bad.path, "line": bad.line, "field": bad.field, "error": bad.error}


def _write_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
