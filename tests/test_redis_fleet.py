"""A whole fleet on the Redis store: `coordinator run` and its agent processes, a real redis-server."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.conftest import coordinator_argv, subprocess_env
from tests.redis_support import RedisServer, redis_server  # noqa: F401  (fixture)

TASKS = 12


def test_a_fleet_on_redis_does_every_task_exactly_once(redis_server: RedisServer,
                                                       make_fleet: Callable[..., Path]) -> None:
    redis_server.flush()
    root = make_fleet(f'[fleet]\nheartbeat_s = 0.5\nagents = 3\nstate = "{redis_server.url}"\nstate_name = "e2e"\n'
                      '[backends.default]\nkind = "echo"\nlatency_ms = 5\n',
                      tasks={f"t{n}.toml": f'prompt = "task {n}"\n' for n in range(TASKS)})
    run = subprocess.run(coordinator_argv("-C", str(root), "run", "--until-empty"), capture_output=True,
                         text=True, env=subprocess_env(), timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    status = subprocess.run(coordinator_argv("-C", str(root), "status", "--json"), capture_output=True, text=True,
                            env=subprocess_env(), timeout=60)
    assert json.loads(status.stdout)["tasks"]["done"] == TASKS
    entries = redis_server.client().xrange("coordinator:{fleet:e2e}:events")
    kinds = Counter((event["event"], event.get("task")) for event in (json.loads(f["e"]) for _, f in entries))
    for n in range(TASKS):
        assert kinds[("claimed", f"t{n}")] == kinds[("done", f"t{n}")] == 1
    assert not (root / ".coordinator" / "records").exists()  # nothing went to the file store
