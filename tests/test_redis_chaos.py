"""Chaos on Redis: 8 agents on two host identities, 500 ledger tasks, 10 kill -9s and 2 SIGSTOPs past the lease.

Every task must be done exactly once (one `done` event each in the Redis stream),
no two runs of a task may overlap (the ledger the runs write themselves), and the
writes of the agents stopped past their lease must be refused as fenced and logged.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path

from coordinator.clock import poll
from coordinator.config import load_config
from coordinator.store import open_store
from tests.conftest import coordinator_argv, subprocess_env
from tests.procs import assert_no_overlap, read_ledger, start_agent, stop, write_ledger_fleet, write_tasks
from tests.redis_support import RedisServer, need_redis

TASKS = 500
LEASE_S = 2.0
KILLS = 10
STOPS = 2


def host_root(base: Path, host: str, url: str, ledger: Path) -> Path:
    """One "host": a fleet root on the shared Redis, with the same task files and one shared ledger."""
    root = base / host
    (root / "tasks").mkdir(parents=True)
    write_ledger_fleet(root, lease_s=LEASE_S, heartbeat_s=0.2, sleep_first=0.3, grace_s=1)
    toml = (root / "fleet.toml").read_text().replace(str(root / "ledger.txt"), str(ledger))
    (root / "fleet.toml").write_text(toml.replace("[fleet]\n", f'[fleet]\nstate = "{url}"\nstate_name = "chaos"\n', 1))
    write_tasks(root, TASKS)
    return root


def test_chaos_on_redis_every_task_done_exactly_once_and_stale_writes_fenced(tmp_path: Path) -> None:
    need_redis()
    server = RedisServer(tmp_path / "redis").start()
    ledger = tmp_path / "ledger.txt"
    roots = {host: host_root(tmp_path, host, server.url, ledger) for host in ("host-a", "host-b")}
    names = [(f"{host[-1]}{n}", host) for host in roots for n in range(4)]
    envs = {host: subprocess_env(COORDINATOR_HOST=host) for host in roots}
    procs = {name: start_agent(roots[host], name, "--until-empty", env=envs[host]) for name, host in names}
    hosts = dict(names)
    store = open_store(load_config(roots["host-a"]))
    rng = random.Random(7)
    kills = stops = 0
    try:
        for _ in poll(0.3, timeout_s=300):
            if all(p.poll() is not None for p in procs.values()):
                break
            holders = {c.agent for c in store.list_claims()}
            live = [n for n, p in procs.items() if p.poll() is None and n in holders]
            if not live:
                continue
            victim = rng.choice(live)
            if kills < KILLS and not (kills in (3, 6) and stops < kills // 3):
                procs[victim].kill()  # kill -9: its claim is reclaimed (at once on its own host, by lease elsewhere)
                procs[victim].wait(timeout=10)
                procs[victim] = start_agent(roots[hosts[victim]], victim, "--until-empty", env=envs[hosts[victim]])
                kills += 1
            elif stops < STOPS:  # after the 3rd and the 6th kill
                os.kill(procs[victim].pid, signal.SIGSTOP)  # holding a claim, silent past its lease
                for _ in poll(0.1, timeout_s=LEASE_S * 2.5):
                    pass
                os.kill(procs[victim].pid, signal.SIGCONT)
                stops += 1
        codes = {name: proc.wait(timeout=120) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            stop(proc)
    try:
        assert (kills, stops) == (KILLS, STOPS), "the chaos did not happen while tasks ran"
        assert set(codes.values()) == {0}, {n: (roots[hosts[n]] / f"{n}.stderr").read_text()[-800:] for n in codes}
        entries = server.client().xrange("coordinator:{fleet:chaos}:events")
        events = [json.loads(fields["e"]) for _, fields in entries]
        done = Counter(e["task"] for e in events if e["event"] == "done")
        assert sorted(done) == [f"t{n:04d}" for n in range(TASKS)] and set(done.values()) == {1}
        assert_no_overlap(read_ledger(ledger))
        fenced = [e for e in events if e["event"] == "fenced"]
        assert fenced, "the agents stopped past their lease wrote nothing that was refused"
        stderr = "".join((roots[hosts[n]] / f"{n}.stderr").read_text() for n in codes)
        assert "Traceback" not in stderr
        status = subprocess.run(coordinator_argv("-C", str(roots["host-b"]), "status", "--json"),
                                capture_output=True, text=True, env=envs["host-b"], timeout=60)
        assert json.loads(status.stdout)["tasks"]["done"] == TASKS
    finally:
        server.stop()
