"""Task files across hosts on Redis: a task dropped or added on one host runs on another that has no such file."""

from __future__ import annotations

import json
from pathlib import Path

from coordinator.config import load_config
from coordinator.queue.ops import prepare_tables, write_prepared
from coordinator.store import open_store
from tests.conftest import subprocess_env
from tests.procs import run_cli, start_agent
from tests.redis_support import RedisServer, redis_server  # noqa: F401  (fixture)


def host(base: Path, name: str, url: str) -> Path:
    """A fleet root of one "host" on the shared Redis, whose agent writes where it ran each task."""
    root = base / name
    (root / "tasks").mkdir(parents=True)
    (root / "fleet.toml").write_text(f"""
[fleet]
default_agent = "sh"
state = "{url}"
state_name = "files"
heartbeat_s = 0.3

[agents.sh]
kind = "command"
command = ["sh", "-c", "cat \\"$1\\" > \\"{root}/ran-$0.txt\\"", "{{task_id}}", "{{prompt_file}}"]
""")
    return root


def test_tasks_of_one_host_run_on_another_that_never_saw_the_files(tmp_path: Path,
                                                                   redis_server: RedisServer) -> None:
    redis_server.flush()
    a, b = host(tmp_path, "a", redis_server.url), host(tmp_path, "b", redis_server.url)
    (a / "tasks" / "dropped.toml").write_text('prompt = "dropped on host a"\npriority = 1\n')
    added = run_cli(a, "add", "added on host a", "--id", "added", env=subprocess_env(COORDINATOR_HOST="host-a"))
    assert added.returncode == 0, added.stderr
    seen = run_cli(a, "status", "--json", env=subprocess_env(COORDINATOR_HOST="host-a"))  # a process that sees them
    assert json.loads(seen.stdout)["tasks"]["pending"] == 2
    table = prepare_tables(load_config(a), [{"id": "posted", "prompt": "posted to host a's API"}])
    assert write_prepared(load_config(a), table) == [True]  # what POST /v1/coordinator/tasks does
    assert not any((b / "tasks").iterdir())  # host b has no task file at all
    agent = start_agent(b, "b1", "--until-empty", env=subprocess_env(COORDINATOR_HOST="host-b"))
    assert agent.wait(timeout=60) == 0, (b / "b1.stderr").read_text()
    for task_id, prompt in (("dropped", "dropped on host a"), ("added", "added on host a"),
                            ("posted", "posted to host a's API")):
        assert prompt in (b / f"ran-{task_id}.txt").read_text()
        shown = json.loads(run_cli(b, "show", task_id, "--json").stdout)
        assert shown["state"] == "done" and shown["task"]["source"] == f"tasks/{task_id}.toml"


def test_sharing_is_idempotent_by_hash_and_an_edit_reaches_the_other_host(tmp_path: Path,
                                                                          redis_server: RedisServer) -> None:
    redis_server.flush()
    a, b = host(tmp_path, "a", redis_server.url), host(tmp_path, "b", redis_server.url)
    store = open_store(load_config(a))
    (a / "tasks" / "t1.toml").write_text('prompt = "first words"\n')
    assert run_cli(a, "status").returncode == 0
    version, files = store.read_task_files(None)
    assert files is not None and files["tasks/t1.toml"][2] == 'prompt = "first words"\n'
    assert run_cli(a, "status").returncode == 0  # the same file again: nothing written
    assert store.read_task_files(version) == (version, None)
    (a / "tasks" / "t1.toml").write_text('prompt = "second words"\n')
    assert run_cli(a, "status").returncode == 0
    later, files = store.read_task_files(version)
    assert later == version + 1 and files["tasks/t1.toml"][2] == 'prompt = "second words"\n'
    shown = json.loads(run_cli(b, "show", "t1", "--json").stdout)
    assert "second words" in shown["task"]["prompt"]
    (b / "tasks" / "t1.toml").write_text('prompt = "host b has its own"\n')  # a file on the disk wins
    assert "host b has its own" in json.loads(run_cli(b, "show", "t1", "--json").stdout)["task"]["prompt"]
