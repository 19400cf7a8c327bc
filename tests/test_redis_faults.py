"""A fleet on Redis when Redis fails: killed and restarted, cut off from one host, wiped.

Real ``redis-server`` processes (AOF on), real ``coordinator`` processes, and a
command agent that writes every run's start and end to a ledger, so "exactly
once" is read off what the runs themselves did.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from coordinator.clock import poll
from tests.conftest import coordinator_argv, subprocess_env
from tests.procs import run_cli, start_agent, stop
from tests.redis_support import RedisServer, need_redis
from tests.tcp_proxy import TcpProxy

SCRIPT = r"""#!/bin/sh
# usage: work.sh TASK_ID LEDGER SLEEP_S [SLOW_HOST SLOW_S]
trap 'echo "killed $1 $$ $COORDINATOR_HOST" >> "$2"; exit 143' TERM
echo "start $1 $$ $COORDINATOR_HOST" >> "$2"
pause="$3"
if [ -n "$4" ] && [ "$COORDINATOR_HOST" = "$4" ]; then pause="$5"; fi
sleep "$pause" &
wait $!
echo "end $1 $$ $COORDINATOR_HOST" >> "$2"
"""


@pytest.fixture
def redis(tmp_path: Path) -> RedisServer:
    need_redis()
    server = RedisServer(tmp_path / "redis", "--appendfsync", "always").start()
    yield server
    server.stop()


def fleet(root: Path, url: str, *, lease_s: float, tasks: int, sleep_s: float = 0.1, slow: str = "") -> Path:
    """A fleet root on ``url`` (fleet name "faults") with ``tasks`` tasks; the ledger's path."""
    (root / "tasks").mkdir(parents=True)
    (root / "work.sh").write_text(SCRIPT)
    ledger = root.parent / "ledger.txt"  # shared by every "host" of the test
    extra = "".join(f', "{part}"' for part in slow.split()) if slow else ""
    (root / "fleet.toml").write_text(f"""
[fleet]
default_agent = "sh"
state = "{url}"
state_name = "faults"
lease_s = {lease_s}
heartbeat_s = 0.3
grace_s = 2

[backends.default]
kind = "echo"

[agents.sh]
kind = "command"
command = ["sh", "{root / 'work.sh'}", "{{task_id}}", "{ledger}", "{sleep_s}"{extra}]
""")
    for n in range(tasks):
        (root / "tasks" / f"t{n:03d}.toml").write_text(f'prompt = "task {n}"\n')
    return ledger


def ledger_lines(ledger: Path) -> list[list[str]]:
    return [line.split() for line in ledger.read_text().splitlines()] if ledger.exists() else []


def wait_for(check, timeout_s: float = 60.0) -> None:  # noqa: ANN001
    for _ in poll(0.1, timeout_s=timeout_s):
        if check():
            return
    raise AssertionError("timed out waiting")


def run_until_ends(root: Path, ledger: Path, *, agents: int, ends: int) -> subprocess.Popen:
    """`coordinator run --until-empty`, once ``ends`` runs have finished."""
    run = subprocess.Popen(coordinator_argv("-C", str(root), "run", "-n", str(agents), "--until-empty"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        wait_for(lambda: sum(line[0] == "end" for line in ledger_lines(ledger)) >= ends)
    except AssertionError:
        run.kill()
        raise
    return run


def status_json(root: Path) -> dict:
    result = run_cli(root, "status", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def test_redis_killed_mid_run_agents_wait_status_says_so_and_every_task_completes_once(
        tmp_path: Path, redis: RedisServer) -> None:
    root = tmp_path / "fleet"
    ledger = fleet(root, redis.url, lease_s=8, tasks=30, sleep_s=0.15)
    run = run_until_ends(root, ledger, agents=3, ends=5)
    try:
        redis.kill()
        outage = status_json(root)
        assert not outage["healthy"] and outage["store"]["reachable"] is False
        assert any("unreachable" in p and "waiting" in p for p in outage["problems"])
        table = run_cli(root, "status")
        assert "unreachable" in table.stdout and "Traceback" not in table.stderr
        for _ in poll(0.1, timeout_s=2.0):  # an outage of a few seconds, short of the self-fence
            pass
        redis.start()  # the same port and folder: it replays its AOF
        out, err = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert status_json(root)["tasks"]["done"] == 30
    ends = Counter(line[1] for line in ledger_lines(ledger) if line[0] == "end")
    assert sorted(ends) == [f"t{n:03d}" for n in range(30)] and set(ends.values()) == {1}  # each ran to its end once


def test_a_host_cut_off_from_redis_stops_its_run_before_another_host_takes_the_task(
        tmp_path: Path, redis: RedisServer) -> None:
    proxy = TcpProxy(redis.port)
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    # Host a reaches Redis through the proxy; on host a the task would run for a minute.
    ledger = fleet(host_a, proxy.url(), lease_s=3, tasks=1, sleep_s=0.2, slow="host-a 60")
    fleet(host_b, redis.url, lease_s=3, tasks=1, sleep_s=0.2, slow="host-a 60")
    agent_a = start_agent(host_a, "a1", "--until-empty", env=subprocess_env(COORDINATOR_HOST="host-a"))
    agent_b = None
    try:
        wait_for(lambda: any(line[0] == "start" for line in ledger_lines(ledger)))
        proxy.cut()
        agent_b = start_agent(host_b, "b1", "--until-empty", env=subprocess_env(COORDINATOR_HOST="host-b"))
        agent_b.wait(timeout=90)
        assert agent_b.returncode == 0, (host_b / "b1.stderr").read_text()[-2000:]
        proxy.mend()
        agent_a.wait(timeout=90)
    finally:
        proxy.close()
        for proc in (agent_a, agent_b):
            if proc is not None and proc.poll() is None:
                stop(proc)
    events = [(line[0], line[3]) for line in ledger_lines(ledger)]
    # Host a stopped its own run (self-fencing) before host b, which reclaimed the task, began.
    assert events == [("start", "host-a"), ("killed", "host-a"), ("start", "host-b"), ("end", "host-b")]
    stderr_a = (host_a / "a1.stderr").read_text()
    assert "could not be renewed" in stderr_a and "Traceback" not in stderr_a
    record = json.loads(run_cli(host_b, "show", "t000", "--json").stdout)
    assert record["state"] == "done"


def test_a_flushed_redis_halts_the_fleet_with_the_incarnation_error(tmp_path: Path, redis: RedisServer) -> None:
    root = tmp_path / "fleet"
    ledger = fleet(root, redis.url, lease_s=8, tasks=20, sleep_s=0.3)
    run = run_until_ends(root, ledger, agents=2, ends=2)
    try:
        redis.flush()
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0
    assert "wiped or replaced" in err and "Traceback" not in err
    # Nothing of the store was recreated: no epoch reissued. (The gateway may have put its spend back,
    # rebuilt from its own ledger, docs/gateway.md: budgets must hold whatever Redis lost.)
    assert [key for key in redis.client().keys("*") if ":gw:budget:" not in key] == []
    stat = run_cli(root, "status")
    assert stat.returncode != 0 and "wiped or replaced" in stat.stderr and "Traceback" not in stat.stderr
