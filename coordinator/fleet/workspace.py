"""Where a claim does its work: its run folder, ``runs/<id>/<epoch>/`` under the state dir.

One folder per claim, named by its epoch: attempt numbers repeat after a
``retry`` or a release, epochs never do, so no run ever writes into another
run's folder (docs/architecture.md, "State on disk").
"""

from __future__ import annotations

from pathlib import Path

from ..config import FleetConfig


def runs_root(config: FleetConfig, task_id: str) -> Path:
    """The folder holding every run folder of ``task_id``."""
    return config.state_dir / "runs" / task_id


def run_dir(config: FleetConfig, task_id: str, epoch: int) -> Path:
    """The run folder of one claim (created on demand)."""
    path = runs_root(config, task_id) / str(epoch)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_dirs(config: FleetConfig, task_id: str) -> list[Path]:
    """Run folders of a task, oldest first."""
    base = runs_root(config, task_id)
    if not base.is_dir():
        return []
    return sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
