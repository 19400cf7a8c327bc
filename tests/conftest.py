"""Shared fixtures: a fleet-root factory on real files, with all state under tmp_path."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

PYTHON = sys.executable


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees a real API key or a fleet root from the developer's shell."""
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL",
                 "COORDINATOR_ROOT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_fleet(tmp_path: Path) -> Callable[..., Path]:
    """Create a fleet root: ``make_fleet(fleet_toml=..., tasks={"a.toml": "..."})``."""

    def make(fleet_toml: str = "", tasks: dict[str, str] | None = None, name: str = "fleet") -> Path:
        root = tmp_path / name
        (root / "tasks").mkdir(parents=True, exist_ok=True)
        (root / "fleet.toml").write_text(textwrap.dedent(fleet_toml))  # empty: all defaults
        for rel, text in (tasks or {}).items():
            path = root / "tasks" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        return root

    return make


def coordinator_argv(*args: str) -> list[str]:
    """argv that runs the coordinator CLI in a real subprocess."""
    return [PYTHON, "-m", "coordinator", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for coordinator subprocesses, without keys from the outer shell."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "COORDINATOR_ROOT")}
    env.update(extra)
    return env
from tests.fake_upstream import fake_upstream  # noqa: F401  (fixture)
