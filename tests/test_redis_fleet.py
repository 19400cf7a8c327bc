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
NOOP_AGENT = '[agents.noop]\nkind = "command"\ncommand = ["true"]\n'  # no gateway needed


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


def test_agents_on_redis_claim_from_the_servers_ready_set_in_priority_and_dependency_order(
        redis_server: RedisServer, make_fleet: Callable[..., Path]) -> None:
    """One agent, so the claim order is the ready set's: priority first, a dependent only after its dependency."""
    redis_server.flush()
    tasks = {"a.toml": 'prompt = "a"\npriority = "low"\n',
             "b.toml": 'prompt = "b"\npriority = "critical"\ndepends_on = ["c"]\n',
             "c.toml": 'prompt = "c"\npriority = "normal"\n',
             "d.toml": 'prompt = "d"\npriority = "high"\n'}
    root = make_fleet(f'[fleet]\nheartbeat_s = 0.5\nstate = "{redis_server.url}"\nstate_name = "order"\n'
                      f'default_agent = "noop"\n{NOOP_AGENT}', tasks=tasks)
    agent = subprocess.run(coordinator_argv("-C", str(root), "agent", "--id", "solo", "--until-empty"),
                           capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert agent.returncode == 0, agent.stderr[-2000:]
    assert "ready set" not in agent.stderr  # every claim came from the server's pick, none by the fallback
    entries = redis_server.client().xrange("coordinator:{fleet:order}:events")
    claimed = [event["task"] for event in (json.loads(f["e"]) for _, f in entries) if event["event"] == "claimed"]
    assert claimed == ["d", "c", "b", "a"]


def test_a_claimed_task_this_host_cannot_read_is_given_back_and_dropped_from_the_ready_set(
        redis_server: RedisServer, make_fleet: Callable[..., Path]) -> None:
    """A definition in the ready set with no valid task file (here: none at all) is released, not run."""
    from coordinator.config import load_config
    from coordinator.store import open_store
    from coordinator.tasks import Task

    redis_server.flush()
    root = make_fleet(f'[fleet]\nheartbeat_s = 0.5\nstate = "{redis_server.url}"\nstate_name = "ghost"\n'
                      f'default_agent = "noop"\n{NOOP_AGENT}', tasks={"real.toml": 'prompt = "real"\n'})
    store = open_store(load_config(root))
    store.load_ready([Task(id="ghost", prompt="nowhere", priority=0)], [], version=0)
    agent = subprocess.run(coordinator_argv("-C", str(root), "agent", "--id", "solo", "--until-empty"),
                           capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert agent.returncode == 0, agent.stderr[-2000:]
    assert "ghost: claimed from the store's ready set but its task file is not valid here" in agent.stderr
    ghost, real = store.read_record("ghost"), store.read_record("real")
    assert ghost is not None and ghost.state == "pending" and ghost.attempts == 0
    assert real is not None and real.state == "done"
    assert store.claim_next(store_holder(), lease_s=30) is None  # dropped: nobody claims it again


def store_holder():  # noqa: ANN201
    from coordinator.queue.claims import current_holder

    return current_holder("probe")


def test_coordinator_add_on_redis_makes_the_task_claimable_at_once(redis_server: RedisServer,
                                                                   make_fleet: Callable[..., Path]) -> None:
    """No agent has to rescan the folder first: `add` loads the definition into the ready set itself."""
    from coordinator.config import load_config
    from coordinator.store import open_store

    redis_server.flush()
    root = make_fleet(f'[fleet]\nstate = "{redis_server.url}"\nstate_name = "adding"\ndefault_agent = "noop"\n'
                      f'{NOOP_AGENT}', tasks={})
    added = subprocess.run(coordinator_argv("-C", str(root), "add", "write the changelog", "--id", "changelog",
                                            "--priority", "high"),
                           capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert added.returncode == 0, added.stderr
    claim = open_store(load_config(root)).claim_next(store_holder(), lease_s=30)
    assert claim is not None and claim.task == "changelog"
