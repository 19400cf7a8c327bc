"""Worktree mode on a Redis store: landing is on one host's repository, so every agent must be on that host."""

from __future__ import annotations

import time
from pathlib import Path

from coordinator.config import load_config
from coordinator.store import open_store
from tests.procs import run_cli
from tests.redis_support import RedisServer, redis_server  # noqa: F401  (fixture)
from tests.ws_support import add_tasks, make_repo_fleet

SCRIPT = 'echo "$1" > "out-$1.txt"\n'


def test_an_agent_of_another_host_refuses_worktree_mode_with_its_fix(tmp_path: Path,
                                                                      redis_server: RedisServer) -> None:
    redis_server.flush()
    root = make_repo_fleet(tmp_path / "repo", SCRIPT, fleet=f'state = "{redis_server.url}"\nstate_name = "wt"\n')
    add_tasks(root, ["t1"])
    store = open_store(load_config(root))
    elsewhere = {"id": "remote-1", "host": "another-host", "state": "idle", "heartbeat_at": time.time(), "pid": 1}
    store.write_agent("remote-1", elsewhere)
    for argv in (["agent", "--until-empty"], ["run", "--until-empty"]):
        refused = run_cli(root, *argv)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "agent remote-1 runs on another-host" in refused.stderr and 'set mode = "shared"' in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    store.write_agent("remote-1", {**elsewhere, "state": "stopped"})  # gone from the fleet: no longer in the way
    ran = run_cli(root, "agent", "--until-empty")
    assert ran.returncode == 0, ran.stderr
    assert record_landed(root, store)


def record_landed(root: Path, store) -> bool:  # noqa: ANN001
    rec = store.read_record("t1")
    return rec is not None and rec.landed is not None and (root / "out-t1.txt").exists()
