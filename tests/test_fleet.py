"""`coordinator run` and `coordinator status` with real processes (issue: the fleet)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

from tests.conftest import coordinator_argv, subprocess_env
from tests.procs import (assert_no_overlap, claims, events, read_ledger, record, run_cli, start_agent, stop, wait_for, write_ledger_fleet,
                         write_tasks)

SHARED_DOC = "\n".join(f"Rule {n}: every change keeps the claim protocol's properties and is tested with "
                       f"real processes, real files and a real local upstream." for n in range(120))

ECHO_FLEET = """
[fleet]
heartbeat_s = 0.5

[backends.default]
kind = "echo"
latency_ms = 5

[agents.llm]
kind = "llm"
system = "You are a careful engineer."
shared_context = ["context/*.md"]
"""


def start_run(root: Path, *args: str) -> subprocess.Popen:
    """`coordinator run` in its own process group, output to run.out."""
    out = open(root / "run.out", "ab")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(coordinator_argv("-C", str(root), "run", *args), stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=subprocess_env(), start_new_session=True)


def status_json(root: Path) -> dict:
    result = run_cli(root, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)



def test_end_to_end_40_echo_tasks_share_context_and_collapse(make_fleet) -> None:
    # 10 distinct prompts, each asked by 4 tasks: identical requests the gateway must collapse.
    tasks = {f"t{n:02d}.toml": f'prompt = "Summarize rule {n % 10} of the shared context."\n' for n in range(40)}
    root = make_fleet(ECHO_FLEET, tasks)
    (root / "context").mkdir()
    (root / "context" / "rules.md").write_text(SHARED_DOC)
    result = run_cli(root, "run", "-n", "4", "--until-empty", "--no-dashboard", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fleet summary" in result.stdout
    status = status_json(root)
    assert status["tasks"]["done"] == 40
    gateway = status["gateway"]
    assert gateway["requests"] == 40
    assert gateway["upstream_calls"] < gateway["requests"]
    assert gateway["dedup_joined"] + gateway["dedup_hits"] == gateway["requests"] - gateway["upstream_calls"]
    assert gateway["cache_read_tokens"] > 0 and gateway["usd_saved"] > 0
    for n in range(40):
        usage = record(root, f"t{n:02d}")["usage"]
        assert usage["requests"] == 1
        served_by_dedup = usage["dedup_joined"] + usage["dedup_hits"] == 1
        # A collapsed request bills nothing upstream: its value shows as saved, not spent.
        assert (usage["usd_saved"] > 0 and usage["usd"] == 0) if served_by_dedup else usage["input_tokens"] > 0
    output = (root / ".coordinator" / "runs" / "t03" / "1" / "output.md").read_text()
    assert "rule 3" in output
    assert status["healthy"] and not claims(root)


def test_a_real_anthropic_sdk_client_goes_through_the_gateway(make_fleet) -> None:
    script = textwrap.dedent("""
        import anthropic
        client = anthropic.Anthropic()  # base URL and key come from the environment the runner set
        reply = client.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                                       messages=[{"role": "user", "content": "hello from an SDK"}])
        print(reply.content[0].text)
    """)
    root = make_fleet(f"""
        [backends.default]
        kind = "echo"
        latency_ms = 0

        [agents.sdk]
        kind = "command"
        command = ["{sys.executable}", "sdk_client.py"]
    """, {"sdk-task.toml": 'prompt = "call the model"\nagent = "sdk"\n'})
    (root / "sdk_client.py").write_text(script)
    result = run_cli(root, "run", "-n", "1", "--until-empty", "--no-dashboard", timeout=120,
                     env=subprocess_env(ANTHROPIC_API_KEY="sk-ant-real-key-must-not-leak"))
    assert result.returncode == 0, result.stdout
    rec = record(root, "sdk-task")
    assert rec["state"] == "done" and rec["usage"]["requests"] == 1 and rec["usage"]["output_tokens"] > 0
    assert "hello from an SDK" in (root / ".coordinator" / "runs" / "sdk-task" / "1" / "stdout.log").read_text()
    saved = json.loads((root / ".coordinator" / "gateway-stats.json").read_text())
    assert saved["tasks"]["sdk-task"]["requests"] == 1
    leaked = [p for p in (root / ".coordinator").rglob("*") if p.is_file()
              and b"sk-ant-real-key-must-not-leak" in p.read_bytes()]
    assert leaked == []


def test_kill_9_of_an_agent_during_run_restarts_it_and_finishes_the_task(make_fleet) -> None:
    root = make_fleet()
    write_ledger_fleet(root, lease_s=600, heartbeat_s=0.2, sleep_first=60)
    write_tasks(root, 1)
    run = start_run(root, "-n", "1", "--until-empty", "--no-dashboard")
    try:
        held = wait_for(lambda: [c for c in claims(root) if c.get("child_pid")], what="a running task")
        os.kill(held[0]["pid"], signal.SIGKILL)
        assert run.wait(timeout=90) == 0, (root / "run.out").read_text()
    finally:
        stop(run)
    rec = record(root, "t0000")
    assert rec["state"] == "done" and rec["attempts"] == 2
    kinds = [e["event"] for e in events(root)]
    assert "agent_exited" in kinds and kinds.count("agent_spawned") == 2
    assert any(e["event"] == "reclaimed" and e["reason"] == "dead" for e in events(root))


def test_kill_9_of_run_itself_then_a_second_run_finishes_the_rest(make_fleet) -> None:
    root = make_fleet()
    ledger = write_ledger_fleet(root, heartbeat_s=0.2)
    (root / "ledger.sh").write_text((root / "ledger.sh").read_text().replace(
        'echo "end', 'sleep 0.3\necho "end'))
    ids = write_tasks(root, 24)
    first = start_run(root, "-n", "3", "--until-empty", "--no-dashboard")
    try:
        wait_for(lambda: sum(1 for e in read_ledger(ledger) if e[0] == "end") >= 4, timeout=60, what="some done")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        # Its agents notice their supervisor is gone, release their claims and exit.
        wait_for(lambda: not claims(root), timeout=30, what="claims released by orphaned agents")
    finally:
        stop(first)
    result = run_cli(root, "run", "-n", "3", "--until-empty", "--no-dashboard", timeout=120)
    assert result.returncode == 0, result.stdout
    done = Counter(e["task"] for e in events(root) if e["event"] == "done")
    assert done == Counter(ids), "every task recorded done exactly once"
    assert all(record(root, t)["state"] == "done" for t in ids)
    entries = read_ledger(ledger)
    assert_no_overlap(entries)
    # A run the dying fleet cut short may have printed its last line before it was killed;
    # it was released, not recorded, so running it again is the at-least-once contract.
    released = {e["task"] for e in events(root) if e["event"] == "released"}
    ends = Counter(task for kind, task, _, _ in entries if kind == "end")
    assert all(n == 1 or task in released for task, n in ends.items()) and set(ends) == set(ids)


def test_ctrl_c_releases_running_tasks_within_grace(make_fleet) -> None:
    root = make_fleet()
    write_ledger_fleet(root, heartbeat_s=0.2, sleep_first=60, grace_s=1)
    ids = write_tasks(root, 4)
    run = start_run(root, "-n", "2", "--until-empty", "--no-dashboard")
    try:
        wait_for(lambda: len([c for c in claims(root) if c.get("child_pid")]) == 2, what="two running tasks")
        os.kill(run.pid, signal.SIGINT)
        assert run.wait(timeout=30) == 130
    finally:
        stop(run)
    assert claims(root) == []
    states = Counter(record(root, t)["state"] for t in ids if (root / ".coordinator" / "records" / f"{t}.json")
                     .exists())
    assert states["running"] == 0
    released = [e for e in events(root) if e["event"] == "released"]
    assert len(released) == 2 and all(record(root, e["task"])["attempts"] == 0 for e in released)
    assert "fleet summary" in (root / "run.out").read_text()


def test_plain_progress_lines_without_a_tty(make_fleet) -> None:
    root = make_fleet(ECHO_FLEET, {f"p{n}.toml": f'prompt = "plain {n}"\n' for n in range(3)})
    (root / "context").mkdir()
    (root / "context" / "a.md").write_text("shared")
    result = run_cli(root, "run", "-n", "2", timeout=120)  # stdin and stdout are pipes: plain and until-empty
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    # Progress lines and per-task lines interleave as tasks finish; every line is timestamped.
    assert all(line.startswith("[") for line in lines[:3]) and any("finished: done" in line for line in lines)
    assert any("3/3 finished: done 3 failed 0" in line for line in lines)
    assert "\x1b[" not in result.stdout, "no terminal escapes in plain mode"


def test_failed_tasks_make_run_exit_1(make_fleet) -> None:
    root = make_fleet("""
        [fleet]
        default_agent = "fails"
        [agents.fails]
        kind = "command"
        command = ["false"]
    """, {"a.toml": 'prompt = "x"\nmax_attempts = 2\n', "b.toml": 'prompt = "y"\ndepends_on = ["a"]\n'})
    result = run_cli(root, "run", "-n", "2", "--no-dashboard", timeout=120)
    assert result.returncode == 1
    status = status_json(root)
    assert status["tasks"]["failed"] == 1 and status["tasks"]["blocked"] == 1
    assert record(root, "a")["attempts"] == 2


def test_status_while_running_after_and_check_on_dead_holder(make_fleet) -> None:
    root = make_fleet()
    write_ledger_fleet(root, heartbeat_s=0.2, sleep_first=60)
    write_tasks(root, 1)
    agent = start_agent(root, "lonely")
    try:
        wait_for(lambda: [c for c in claims(root) if c.get("child_pid")], what="running")
        live = status_json(root)
        assert live["tasks"]["running"] == 1 and live["healthy"]
        (row,) = live["agents"]
        assert row["alive"] and row["state"] == "running" and row["task"] == "t0000"
        assert run_cli(root, "status", "--check").returncode == 0
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(timeout=10)
        dead = status_json(root)
        assert dead["agents"][0]["state"] == "dead" and not dead["healthy"]
        assert dead["stale_claims"][0]["task"] == "t0000" and dead["stale_claims"][0]["reason"] == "dead"
        check = run_cli(root, "status", "--check")
        assert check.returncode == 1 and "dead agent" in check.stdout
    finally:
        stop(agent)
        for claim in claims(root):
            if claim.get("child_pid"):
                try:
                    os.killpg(claim["child_pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_a_hung_agent_is_killed_and_replaced(make_fleet) -> None:
    root = make_fleet()
    write_ledger_fleet(root, lease_s=1.0, heartbeat_s=0.2, sleep_first=60)
    write_tasks(root, 1)
    run = start_run(root, "-n", "1", "--until-empty", "--no-dashboard")
    try:
        held = wait_for(lambda: [c for c in claims(root) if c.get("child_pid")], what="a running task")
        os.kill(held[0]["pid"], signal.SIGSTOP)  # alive to psutil, silent to the supervisor
        assert run.wait(timeout=90) == 0, (root / "run.out").read_text()
    finally:
        stop(run)
    hung = [e for e in events(root) if e["event"] == "agent_hung"]
    assert hung and hung[0]["pid"] == held[0]["pid"]
    rec = record(root, "t0000")
    assert rec["state"] == "done" and rec["attempts"] == 2


def test_watch_mode_picks_up_task_files_dropped_while_running(make_fleet) -> None:
    root = make_fleet()
    write_ledger_fleet(root, heartbeat_s=0.2)
    write_tasks(root, 1, prefix="first")
    run = start_run(root, "-n", "2", "--watch", "--no-dashboard")
    try:
        wait_for(lambda: (root / ".coordinator" / "records" / "first0000.json").exists()
                 and record(root, "first0000")["state"] == "done", what="the first task done")
        write_tasks(root, 3, prefix="later")  # dropped into tasks/ while the fleet runs
        wait_for(lambda: all((root / ".coordinator" / "records" / f"later{n:04d}.json").exists()
                             and record(root, f"later{n:04d}")["state"] == "done" for n in range(3)),
                 what="the dropped tasks done")
        assert run.poll() is None, "--watch keeps running when the queue is empty"
        os.kill(run.pid, signal.SIGTERM)
        assert run.wait(timeout=30) == 143
    finally:
        stop(run)
    assert claims(root) == []
