"""The benchmark scripts still run end to end, at toy sizes (their figures are not checked: no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import subprocess_env
from tests.redis_support import need_redis

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_script(name: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_bench_api_measures_each_figure() -> None:
    result = run_script("bench_api.py", "--tasks", "16", "--cli-tasks", "2", "--clients", "8",
                        "--probes", "2", "--idle-s", "0.2")
    assert [row["samples"] for row in result["event_delay"]] == [2, 16]
    assert result["enqueue"]["api_c16"]["tasks"] == 16 and result["enqueue"]["cli_c16"]["tasks"] == 2
    assert set(result["idle_cpu"]) >= {"cpu_pct_0_clients", "cpu_pct_8_clients", "added_cpu_pct_per_client"}
    assert set(result["targets"]) == {"idle_8_clients_under_2pct_cpu"}


def test_bench_queue_on_redis_counts_commands_per_claim() -> None:
    need_redis()
    result = run_script("bench_queue.py", "--store", "redis", "--sizes", "12", "--agents", "2")["redis"]
    (run,) = result["queue"]
    assert run["done"] == run["finished"] == 12 and run["agent_exit_codes_ok"]
    assert run["server"]["server_ran"]["by_command"]["evalsha"] >= 24  # a claim and a finish a task, at least
    sent = result["round_trips"]["clients_sent"]["by_command"]
    assert sent["evalsha claim_next"] >= 12 and sent["evalsha finish"] >= 12  # + a NOSCRIPT miss on first use
    assert "evalsha claim" not in sent  # the server picks: no claim by id, so no refused claims
    assert result["round_trips"]["scripts_ran"]["by_command"]["xadd"] >= 24  # the claimed and done events
