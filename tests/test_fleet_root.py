"""The fleet root is found as git finds .git: walk up to the nearest fleet.toml; never make state elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

COORDINATOR = [sys.executable, "-m", "coordinator"]


def run_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COORDINATOR_ROOT"}
    return subprocess.run([*COORDINATOR, *args], cwd=folder, capture_output=True, text=True, env=env, timeout=60)


def test_status_in_a_subfolder_finds_the_fleet(make_fleet) -> None:
    root = make_fleet(tasks={"a.toml": 'prompt = "a"\n', "b.toml": 'prompt = "b"\n'})
    deep = root / "tasks" / "nested" / "deeper"
    deep.mkdir(parents=True)
    result = run_in(deep, "status", "--json")
    assert result.returncode == 0, result.stderr
    assert '"pending": 2' in result.stdout
    assert not (root / "tasks" / ".coordinator").exists() and not (deep / ".coordinator").exists()
    assert (root / ".coordinator").is_dir(), "state goes to the fleet root that was found"


def test_no_fleet_here_or_above_is_exit_2_and_creates_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (("status",), ("run", "-n", "1"), ("tasks",), ("agent", "--until-empty"), ("add", "x")):
        result = run_in(empty, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "no fleet.toml" in result.stderr and "coordinator init" in result.stderr and "-C" in result.stderr
        assert list(empty.iterdir()) == [], f"{args} created {list(empty.iterdir())}"


def test_dash_c_walks_up_from_the_folder_it_names(make_fleet) -> None:
    root = make_fleet(tasks={"a.toml": 'prompt = "a"\n'})
    result = run_in(Path("/"), "-C", str(root / "tasks"), "tasks", "--json")
    assert result.returncode == 0, result.stderr
    assert '"id": "a"' in result.stdout


def test_a_second_gateway_in_one_root_is_refused_and_the_first_keeps_serving(make_fleet) -> None:
    from tests.conftest import coordinator_argv, subprocess_env
    from tests.procs import wait_for

    root = make_fleet()
    first = subprocess.Popen(coordinator_argv("-C", str(root), "gateway"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=subprocess_env())
    try:
        state = root / ".coordinator" / "gateway.json"
        wait_for(lambda: state.exists(), what="the first gateway's gateway.json")
        before = state.read_bytes()
        second = run_in(root, "gateway")
        assert second.returncode == 2
        assert second.stderr.startswith("error: a gateway (http://127.0.0.1:") and "already running" in second.stderr
        assert f"pid {first.pid}" in second.stderr and second.stderr.count("\n") == 1
        assert state.read_bytes() == before and first.poll() is None
    finally:
        first.terminate()
        first.wait(timeout=30)
