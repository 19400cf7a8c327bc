"""The claim protocol's properties, proven with real `coordinator agent` processes (DESIGN §5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil

from coordinator.config import load_config
from coordinator.liveness import HOST
from coordinator.store import Claim, Record, open_store
from tests.procs import (assert_no_overlap, events, read_ledger, record, run_cli, start_agent, stop, wait_for,
                         write_ledger_fleet, write_tasks)


def claim_json(root: Path, task_id: str) -> dict | None:
    path = root / ".coordinator" / "claims" / f"{task_id}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_eight_agents_run_500_tasks_exactly_once(make_fleet) -> None:
    root = make_fleet()
    ledger = write_ledger_fleet(root)
    ids = write_tasks(root, 500)
    agents = [start_agent(root, f"agent-{n}", "--until-empty") for n in range(8)]
    try:
        for proc in agents:
            assert proc.wait(timeout=240) == 0
    finally:
        for proc in agents:
            stop(proc)
    entries = read_ledger(ledger)
    starts = Counter(task for kind, task, _, _ in entries if kind == "start")
    ends = Counter(task for kind, task, _, _ in entries if kind == "end")
    assert starts == Counter(ids) and ends == Counter(ids)
    assert_no_overlap(entries)
    assert all(record(root, t)["state"] == "done" and record(root, t)["attempts"] == 1 for t in ids)
    claimed_by = Counter(e["agent"] for e in events(root) if e["event"] == "claimed")
    assert len(claimed_by) > 1, "the work was spread over several agents"
    assert not list((root / ".coordinator" / "claims").glob("*.json"))


def test_kill_9_mid_task_is_reclaimed_at_once_and_finished(make_fleet) -> None:
    root = make_fleet()
    # A lease far longer than the test: only the dead PID can explain a reclaim.
    ledger = write_ledger_fleet(root, lease_s=600, heartbeat_s=0.2, sleep_first=60)
    write_tasks(root, 1)
    victim = start_agent(root, "victim")
    try:
        wait_for(lambda: (c := claim_json(root, "t0000")) and c.get("child_pid"), what="runner pid in claim")
        wait_for(lambda: read_ledger(ledger), what="the runner past its gate")  # its pid is written first
        child_pid = claim_json(root, "t0000")["child_pid"]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        rescuer = start_agent(root, "rescuer", "--until-empty")
        assert rescuer.wait(timeout=60) == 0
    finally:
        stop(victim)
    rec = record(root, "t0000")
    assert rec["state"] == "done" and rec["attempts"] == 2
    assert [h["outcome"] for h in rec["history"]] == ["reclaimed", "done"]
    reclaim = next(e for e in events(root) if e["event"] == "reclaimed")
    assert reclaim["reason"] == "dead" and reclaim["agent"] == "victim"
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
    starts = [e for e in read_ledger(ledger) if e[0] == "start"]
    assert [attempt for _, _, _, attempt in starts] == [1, 2]


def test_sigstop_past_lease_is_fenced_after_sigcont(make_fleet) -> None:
    root = make_fleet()
    ledger = write_ledger_fleet(root, lease_s=1.0, heartbeat_s=0.2, sleep_first=30)
    write_tasks(root, 1)
    sleeper = start_agent(root, "sleeper")
    try:
        wait_for(lambda: (c := claim_json(root, "t0000")) and c.get("child_pid"), what="runner started")
        wait_for(lambda: read_ledger(ledger), what="the runner past its gate")  # its pid is written first
        os.kill(sleeper.pid, signal.SIGSTOP)
        rescuer = start_agent(root, "rescuer", "--until-empty")
        assert rescuer.wait(timeout=60) == 0
        assert record(root, "t0000")["state"] == "done"
        os.kill(sleeper.pid, signal.SIGCONT)
        refused = wait_for(lambda: [e for e in events(root) if e["event"] == "fenced" and e["agent"] == "sleeper"],
                           what="the woken agent's refusal in events.jsonl")
        wait_for(lambda: any(e["action"] in ("done", "fail", "release") for e in events(root)
                             if e["event"] == "fenced" and e["agent"] == "sleeper"),
                 what="a refused complete/fail/release")
        assert refused[0]["epoch"] == 1
        os.kill(sleeper.pid, signal.SIGTERM)
        assert sleeper.wait(timeout=20) == 0
    finally:
        stop(sleeper)
    rec = record(root, "t0000")
    assert rec["state"] == "done" and rec["epoch"] == 2 and rec["agent"] == "rescuer"
    assert [h["outcome"] for h in rec["history"]] == ["reclaimed", "done"]
    # The takeover stopped the paused agent's runner (SIGTERM, which it noted) before attempt 2 started.
    (k1, _, first_pid, a1), (k0, _, killed_pid, _), (k2, _, second_pid, a2), (k3, _, end_pid, a3) = read_ledger(ledger)
    assert (k1, a1, k0, k2, a2, k3, a3) == ("start", 1, "killed", "start", 2, "end", 2)
    assert killed_pid == first_pid and end_pid == second_pid
    assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == psutil.STATUS_ZOMBIE


def test_claim_with_reused_pid_is_reclaimed_without_lease_wait(make_fleet) -> None:
    root = make_fleet()
    ledger = write_ledger_fleet(root, lease_s=600)
    write_tasks(root, 1)
    store = open_store(load_config(root))
    live = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        started = psutil.Process(live.pid).create_time()
        now = psutil.time.time()
        store.plant(record=Record(id="t0000", state="running", epoch=1, agent="old"))
        store.plant(claim=Claim(task="t0000", agent="old", pid=live.pid, pid_started_at=started - 300, host=HOST,
                                claimed_at=now, renewed_at=now, lease_s=600, epoch=1, attempt=1))
        assert run_cli(root, "agent", "--until-empty").returncode == 0
        assert live.poll() is None, "the process that reused the pid is left alone"
    finally:
        live.kill()
        live.wait()
    rec = record(root, "t0000")
    assert rec["state"] == "done" and rec["attempts"] == 2 and rec["epoch"] == 2
    assert len([e for e in read_ledger(ledger) if e[0] == "start"]) == 1


def test_crash_states_recover_on_next_start(make_fleet) -> None:
    """Each intermediate state a crash can leave, written directly; one agent run recovers all."""
    root = make_fleet()
    ledger = write_ledger_fleet(root)
    write_tasks(root, 5)
    store = open_store(load_config(root))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()

    def ghost_claim(task: str, epoch: int, attempt: int) -> Claim:
        return Claim(task=task, agent="ghost", pid=gone.pid, pid_started_at=0.0, host=HOST, claimed_at=0,
                     renewed_at=0, lease_s=600, epoch=epoch, attempt=attempt)

    # t0000: claim file written, record not yet (crash inside claim).
    store.plant(claim=ghost_claim("t0000", 1, 1))
    # t0001: record says done, claim file not yet deleted (crash inside finish).
    store.plant(record=Record(id="t0001", state="done", epoch=1, attempts=1))
    store.plant(claim=ghost_claim("t0001", 1, 1))
    # t0002: claimed and running when the agent died.
    store.plant(record=Record(id="t0002", state="running", epoch=1))
    store.plant(claim=ghost_claim("t0002", 1, 1))
    # t0003: a running record whose claim file is gone.
    store.plant(record=Record(id="t0003", state="running", epoch=1))
    # t0004: a half-written temp file beside a clean record.
    (root / ".coordinator" / "records" / ".t0004.json.x.tmp").write_text('{"id": "t00')
    result = run_cli(root, "agent", "--until-empty")
    assert result.returncode == 0, result.stderr
    runs = Counter(task for kind, task, _, _ in read_ledger(ledger) if kind == "start")
    assert runs == Counter({"t0000": 1, "t0002": 1, "t0003": 1, "t0004": 1}), "t0001 was done: never rerun"
    assert {t: record(root, t)["state"] for t in ("t0000", "t0001", "t0002", "t0003", "t0004")} == dict.fromkeys(
        ("t0000", "t0001", "t0002", "t0003", "t0004"), "done")
    assert record(root, "t0000")["attempts"] == 1, "an orphan claim costs no attempt"
    assert record(root, "t0002")["attempts"] == 2, "a reclaimed run counts"
    assert not list((root / ".coordinator" / "claims").glob("*.json"))


def test_sigterm_releases_the_claim_uncounted(make_fleet) -> None:
    root = make_fleet()
    write_ledger_fleet(root, sleep_first=60)
    write_tasks(root, 1)
    agent = start_agent(root, "a1")
    try:
        wait_for(lambda: (c := claim_json(root, "t0000")) and c.get("child_pid"), what="runner started")
        child = claim_json(root, "t0000")["child_pid"]
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
    finally:
        stop(agent)
    rec = record(root, "t0000")
    assert rec["state"] == "pending" and rec["attempts"] == 0
    assert claim_json(root, "t0000") is None
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert any(e["event"] == "released" for e in events(root))
