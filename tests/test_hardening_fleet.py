"""Hardening (issue 14), shown with real `coordinator` processes over real files.

A dead gateway fails no task; a fleet stopped for three leases completes no task
twice; context files are read at most to their limit; a workdir swapped for a
symlink never sends a command outside the fleet root; a full disk and a read-only
state dir cost a wait and one line, never a traceback or a second run; state is
private; placeholders are substituted in one pass.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import coordinator_argv, subprocess_env
from tests.procs import (
    claims,
    events,
    read_ledger,
    record,
    run_cli,
    start_agent,
    stop,
    wait_for,
    write_ledger_fleet,
    write_tasks,
)

ECHO_LLM = """
[fleet]
heartbeat_s = 0.5
retry_backoff_s = 0

[backends.default]
kind = "echo"
latency_ms = {latency_ms}

[agents.llm]
kind = "llm"
system = "You are a careful engineer."
"""


def gateway_file(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / ".coordinator" / "gateway.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def start_gateway(root: Path, name: str) -> subprocess.Popen:
    """`coordinator gateway` in its own process group, returned once gateway.json names it."""
    out = open(root / f"{name}.out", "ab")  # noqa: SIM115  (closed with the process)
    proc = subprocess.Popen(coordinator_argv("-C", str(root), "gateway"), stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=subprocess_env(), start_new_session=True)
    wait_for(lambda: (gateway_file(root) or {}).get("pid") == proc.pid or proc.poll() is not None,
             what="gateway.json naming the new gateway")
    assert proc.poll() is None, (root / f"{name}.out").read_text()
    return proc



def run_dir(root: Path, task_id: str, epoch: int = 1) -> Path:
    return root / ".coordinator" / "runs" / task_id / str(epoch)


def finished(root: Path, kind: str = "done") -> Counter:
    return Counter(e["task"] for e in events(root) if e["event"] == kind)


# -- 5. a dead gateway fails no task ------------------------------------------------------


def test_a_gateway_killed_under_running_agents_fails_no_task_and_spends_no_attempt(make_fleet) -> None:
    ids = [f"g{n:02d}" for n in range(20)]
    root = make_fleet(ECHO_LLM.format(latency_ms=150), {f"{t}.toml": f'prompt = "Answer question {t}."\n' for t in ids})
    first = start_gateway(root, "gateway-1")
    agents = [start_agent(root, f"worker-{n}", "--until-empty") for n in range(2)]
    second = None
    try:
        wait_for(lambda: sum(finished(root).values()) >= 2 and claims(root), what="tasks done and in flight")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        wait_for(lambda: [e for e in events(root) if e["event"] == "released"], what="a task given back")
        second = start_gateway(root, "gateway-2")
        for agent in agents:
            assert agent.wait(timeout=90) == 0
    finally:
        for proc in (*agents, first, *([second] if second else [])):
            stop(proc, signal.SIGTERM)
    assert {t: record(root, t)["state"] for t in ids} == dict.fromkeys(ids, "done")
    assert not finished(root, "failed") and not finished(root, "retrying")
    assert all(record(root, t)["attempts"] == 1 for t in ids), "the outage spent no attempt"
    released = [e for e in events(root) if e["event"] == "released"]
    assert all(e["reason"].startswith("infrastructure") for e in released), released


# -- 6. a whole-fleet SIGSTOP for three leases --------------------------------------------


def family(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def signal_all(processes: list[psutil.Process], sig: int) -> None:
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def test_a_fleet_stopped_for_three_leases_completes_no_task_twice(make_fleet) -> None:
    root = make_fleet()
    lease_s = 1.0
    ledger = write_ledger_fleet(root, lease_s=lease_s, heartbeat_s=0.2)
    (root / "ledger.sh").write_text((root / "ledger.sh").read_text().replace('echo "end', 'sleep 0.3\necho "end'))
    ids = write_tasks(root, 16)
    out = open(root / "run.out", "ab")  # noqa: SIM115  (closed below)
    run = subprocess.Popen(coordinator_argv("-C", str(root), "run", "-n", "4", "--until-empty", "--no-dashboard"),
                           stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=subprocess_env(),
                           start_new_session=True)
    stopped: list[psutil.Process] = []
    try:
        wait_for(lambda: any(kind == "end" for kind, *_ in read_ledger(ledger)) and claims(root),
                 what="tasks done and in flight")
        os.kill(run.pid, signal.SIGSTOP)
        for _ in range(10):  # a child spawned while we were stopping the others is stopped too
            fresh = [p for p in family(run) if p not in stopped]
            if not fresh:
                break
            signal_all(fresh, signal.SIGSTOP)
            stopped += fresh
        # The pause IS the scenario (a laptop sleeping past every lease), not a wait for a condition.
        threading.Event().wait(3 * lease_s + 0.5)
        # The supervisor wakes first and looks before any agent could renew: every lease has
        # expired and every heartbeat is old. (Waking the agents first lets them renew in time
        # whether or not the supervisor notices its own pause, so that order proves nothing.)
        os.kill(run.pid, signal.SIGCONT)
        wait_for(lambda: [e for e in events(root) if e["event"] == "fleet_paused"], timeout=10,
                 what="the supervisor noticing it was paused")
        signal_all(stopped, signal.SIGCONT)
        assert run.wait(timeout=90) == 0, (root / "run.out").read_text()
    finally:
        signal_all(stopped, signal.SIGCONT)
        stop(run)
        out.close()
    assert {t: record(root, t)["state"] for t in ids} == dict.fromkeys(ids, "done")
    assert finished(root) == Counter(ids), "each task recorded done exactly once"
    entries = read_ledger(ledger)
    ends = Counter(task for kind, task, _, _ in entries if kind == "end")
    assert ends == Counter(ids), f"completed more than once: {ends - Counter(ids)}"
    assert Counter(task for kind, task, _, _ in entries if kind == "start") == Counter(ids), "none ran again"
    assert not [e for e in events(root) if e["event"] in ("agent_hung", "reclaimed")]
    assert all(record(root, t)["attempts"] == 1 for t in ids)


# -- 7. context files are bounded -----------------------------------------------------------

SPARSE_BYTES = 1536 * 1024 * 1024

MEASURE_SPARSE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from coordinator.runners import llm
    try:
        llm.read_addressed(Path(sys.argv[1]), llm.MAX_CONTEXT_BYTES)
        error = None
    except ValueError as exc:
        error = str(exc)
    # VmHWM, this process's own peak: ru_maxrss would include the forking pytest worker's
    # peak (Linux carries it across exec), which other tests in that worker can push past the limit.
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"error": error, "maxrss_kb": peak}))
""")


def test_a_huge_context_file_fails_its_attempt_naming_the_limit_without_reading_it(make_fleet) -> None:
    root = make_fleet(ECHO_LLM.format(latency_ms=0), {
        "huge.toml": 'prompt = "Read it all."\ncontext = ["big/huge.txt"]\nmax_attempts = 1\n'})
    (root / "big").mkdir()
    huge = root / "big" / "huge.txt"
    with open(huge, "wb"):
        pass
    os.truncate(huge, SPARSE_BYTES)  # sparse: 1.5 GB long, no disk used
    result = run_cli(root, "run", "-n", "1", "--until-empty", "--no-dashboard", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    rec = record(root, "huge")
    assert rec["state"] == "failed"
    assert f"{SPARSE_BYTES} bytes" in rec["last_error"] and "limited to 2097152 bytes" in rec["last_error"]
    probe = subprocess.run([sys.executable, "-c", MEASURE_SPARSE, str(huge)], check=False, capture_output=True,
                           text=True, timeout=60, env=subprocess_env())
    assert probe.returncode == 0, probe.stderr
    measured = json.loads(probe.stdout)
    assert measured["error"] and "limited to" in measured["error"]
    assert measured["maxrss_kb"] < 300 * 1024, f"peak RSS {measured['maxrss_kb']} kB: the file was read"


MEASURE_CACHE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from coordinator.runners import llm
    for path in sorted(Path(sys.argv[1]).iterdir()):
        llm.read_addressed(path, llm.MAX_CONTEXT_BYTES)
    held = sum(len(text.encode()) for _, text in llm._READ_CACHE.values())
    print(json.dumps({"held": held, "entries": len(llm._READ_CACHE), "limit": llm.READ_CACHE_MAX_BYTES}))
""")


def test_the_read_cache_stays_within_its_byte_bound_over_many_files(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for n in range(24):  # 24 distinct 1 MiB files: three times the cache's bound
        (folder / f"doc{n:02d}.md").write_bytes(f"{n:02d}".encode() * (512 * 1024))
    probe = subprocess.run([sys.executable, "-c", MEASURE_CACHE, str(folder)], check=False, capture_output=True,
                           text=True, timeout=60, env=subprocess_env())
    assert probe.returncode == 0, probe.stderr
    measured = json.loads(probe.stdout)
    assert 0 < measured["held"] <= measured["limit"], measured
    assert measured["entries"] < 24, "old entries were let go"


# -- 8. the workdir symlink race --------------------------------------------------------------

RENAME_EXCHANGE = 2
AT_FDCWD = -100


def swap_forever(first: Path, second: Path, stop_at: threading.Event, swaps: list[int]) -> None:
    """Atomically exchange two names (renameat2 RENAME_EXCHANGE) until told to stop (bounded)."""
    libc = ctypes.CDLL(None, use_errno=True)
    deadline = time.monotonic() + 90
    for _ in range(200_000):
        if stop_at.is_set() or time.monotonic() > deadline:
            return
        if libc.renameat2(AT_FDCWD, bytes(first), AT_FDCWD, bytes(second), RENAME_EXCHANGE) != 0:
            raise OSError(ctypes.get_errno(), "renameat2 failed")
        swaps[0] += 1
        stop_at.wait(0.001)  # the racer's pace, not a wait for a condition


def test_a_workdir_swapped_for_a_symlink_never_runs_a_task_outside_the_root(make_fleet, tmp_path: Path) -> None:
    ids = [f"w{n:03d}" for n in range(150)]
    root = make_fleet("""
        [fleet]
        default_agent = "sh"
        heartbeat_s = 0.5
        retry_backoff_s = 0

        [agents.sh]
        kind = "command"
        command = ["sh", "-c", "pwd -P > {output_file}"]
    """, {f"{t}.toml": 'prompt = "where am I"\nworkdir = "work"\nmax_attempts = 1\n' for t in ids}).resolve()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "work").mkdir()
    (root / "work.swap").symlink_to(outside)
    for path in (root / "tasks").iterdir():  # parsed once, before the race, and never re-read as "racy"
        os.utime(path, (time.time() - 60, time.time() - 60))
    listed = run_cli(root, "tasks", "--json")
    assert listed.returncode == 0 and {row["state"] for row in json.loads(listed.stdout)} == {"pending"}
    stop_at, swaps = threading.Event(), [0]
    racer = threading.Thread(target=swap_forever, args=(root / "work", root / "work.swap", stop_at, swaps))
    racer.start()
    try:
        result = run_cli(root, "run", "-n", "2", "--until-empty", "--no-dashboard", timeout=120)
    finally:
        stop_at.set()
        racer.join(timeout=10)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    outcomes = Counter()
    for task in ids:
        rec = record(root, task)
        output = run_dir(root, task) / "output.md"
        if output.exists() and output.read_text().strip():
            ran_in = Path(output.read_text().strip())
            assert ran_in.is_relative_to(root), f"{task} ran in {ran_in}, outside the fleet root"
        if rec["state"] == "failed":
            assert "symlink" in rec["last_error"], rec["last_error"]
        outcomes[rec["state"]] += 1
    assert swaps[0] > 0 and outcomes["done"] and outcomes["failed"], (swaps, outcomes)
    assert list(outside.iterdir()) == []


# -- 9. disk full, and a read-only state dir ----------------------------------------------------

NO_SPACE = re.compile(r"cannot write .* \(No space left on device\); free some disk space")


def mount_tmpfs(folder: Path) -> None:
    """A 2 MB tmpfs at ``folder``, or a skip saying why (a failure where CI requires root)."""
    why = None
    if os.geteuid() != 0:
        why = "needs root to mount a tmpfs"
    else:
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(folder)],
                              check=False, capture_output=True, text=True)
        if done.returncode != 0:
            why = f"mount failed: {done.stderr.strip()}"
    if why is None:
        return
    if os.environ.get("COORDINATOR_REQUIRE_ROOT"):
        pytest.fail(f"COORDINATOR_REQUIRE_ROOT is set but {why}")
    pytest.skip(why)


def unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], check=False, capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def fill(folder: Path) -> Path:
    """Write a file into ``folder`` until the filesystem is full (bounded by count)."""
    path = folder / "fill.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (64 * 1024, 4096, 1):
            for _ in range(10_000):
                try:
                    os.write(fd, b"x" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return path


def test_a_full_disk_costs_a_wait_and_one_line_never_a_crash_or_a_second_run(make_fleet) -> None:
    root = make_fleet()
    ledger = write_ledger_fleet(root, sleep_first=1)
    (root / "fleet.toml").write_text((root / "fleet.toml").read_text().replace(
        "[fleet]\n", '[fleet]\nstate_dir = "state"\n'))
    ids = write_tasks(root, 2)
    state = root / "state"
    mount_tmpfs(state)
    agent = None
    try:
        agent = start_agent(root, "disk", "--until-empty")
        log = root / "disk.stderr"
        wait_for(lambda: (root / "ledger.txt.t0000.running").exists(), what="the first task running")
        filler = fill(state)
        # The run ends while the disk is full, so recording it fails; only then is space freed.
        wait_for(lambda: ("end", "t0000") in {(kind, task) for kind, task, _, _ in read_ledger(ledger)},
                 what="the first task's work finished")
        wait_for(lambda: log.exists() and any(NO_SPACE.search(line) and "records" in line
                                              for line in log.read_text().splitlines()),
                 what="the agent's line saying the record cannot be written")
        filler.unlink()
        assert agent.wait(timeout=60) == 0, log.read_text()
        stderr = log.read_text()
        assert "Traceback" not in stderr, stderr
        full = [line for line in stderr.splitlines() if NO_SPACE.search(line)]
        assert full and len(full) == len(set(full)), "one line per problem, not one per retry"
        recs = {t: json.loads((state / "records" / f"{t}.json").read_text()) for t in ids}
        assert {t: r["state"] for t, r in recs.items()} == dict.fromkeys(ids, "done")
        starts = Counter(task for kind, task, _, _ in read_ledger(ledger) if kind == "start")
        assert starts == Counter(ids), "no task ran twice"
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        for command in ("status", "tasks"):
            result = run_cli(root, command)
            assert "Traceback" not in result.stdout + result.stderr, (command, result.stderr)
            assert len(result.stderr.splitlines()) <= 1, (command, result.stderr)
        (root / "tasks" / "late.toml").write_text('prompt = "one more"\n')
        result = run_cli(root, "run", "-n", "1", "--until-empty", "--no-dashboard", timeout=60)
        assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr, result.stderr
        assert result.stderr.startswith("error: cannot write ") and "Read-only file system" in result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
    finally:
        if agent is not None:
            stop(agent)
        unmount(state)


# -- 10. private state --------------------------------------------------------------------------

PRIVATE_FLEET = """
[fleet]
default_agent = "sh"
heartbeat_s = 0.5

[backends.default]
kind = "echo"
latency_ms = 0

[agents.sh]
kind = "command"
command = ["sh", "-c", "echo made > made-by-{task_id}.txt"]

[agents.llm]
kind = "llm"
"""


def private_fleet(make_fleet) -> Path:
    root = make_fleet(PRIVATE_FLEET, {
        "cmd.toml": 'prompt = "make a file"\n',
        "ask.toml": 'prompt = "read the secret"\nagent = "llm"\ncontext = ["secret.md"]\n'})
    (root / "secret.md").write_text("only the owner may read this")
    (root / "secret.md").chmod(0o600)
    return root


def run_with_umask(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(coordinator_argv("-C", str(root), *args), check=False, capture_output=True, text=True,
                          timeout=120, env=subprocess_env(), umask=0o022)


def not_private(state: Path) -> list[str]:
    wrong = []
    for folder, dirs, files in os.walk(state):
        for name in dirs:
            mode = (Path(folder) / name).lstat().st_mode & 0o777
            if mode != 0o700:
                wrong.append(f"{oct(mode)} {Path(folder, name).relative_to(state)}/")
        for name in files:
            mode = (Path(folder) / name).lstat().st_mode & 0o777
            if mode != 0o600:
                wrong.append(f"{oct(mode)} {Path(folder, name).relative_to(state)}")
    return wrong


def test_a_fleet_run_writes_private_state_while_task_files_keep_the_users_umask(make_fleet) -> None:
    root = private_fleet(make_fleet)
    result = run_with_umask(root, "run", "-n", "2", "--until-empty", "--no-dashboard")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (run_dir(root, "ask") / "request.json").exists()
    state = root / ".coordinator"
    assert state.stat().st_mode & 0o777 == 0o700
    assert not_private(state) == []
    assert (root / "made-by-cmd.txt").stat().st_mode & 0o777 == 0o644, "the user's umask, not the state's"


def test_state_a_read_command_created_before_the_run_is_private_too(make_fleet) -> None:
    root = private_fleet(make_fleet)
    assert run_with_umask(root, "status").returncode == 0  # what a new user types first
    result = run_with_umask(root, "run", "-n", "2", "--until-empty", "--no-dashboard")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not_private(root / ".coordinator") == []


# -- 11. placeholders in one pass -----------------------------------------------------------------


def test_placeholders_written_in_a_prompt_reach_the_command_unchanged(make_fleet) -> None:
    prompt = "keep {workdir} and {output_file} and {prompt} as written"
    root = make_fleet("""
        [fleet]
        default_agent = "sh"
        heartbeat_s = 0.5

        [agents.sh]
        kind = "command"
        command = ["sh", "-c", "printf %s \\"$1\\" > {output_file}", "sh", "{prompt}"]
    """, {"literal.toml": f'prompt = "{prompt}"\n'})
    result = run_cli(root, "run", "-n", "1", "--until-empty", "--no-dashboard", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (run_dir(root, "literal") / "output.md").read_text() == prompt


def test_show_reports_the_prompt_a_run_used_after_the_task_file_is_edited(make_fleet) -> None:
    root = make_fleet("""
        [fleet]
        default_agent = "echo"
        [agents.echo]
        kind = "command"
        command = ["true"]
    """, {"t.toml": 'prompt = "the original prompt"\n'})
    assert run_cli(root, "agent", "--until-empty").returncode == 0
    show = json.loads(run_cli(root, "show", "t", "--json").stdout)
    assert show["last_run_prompt"] is None, "unchanged: nothing to point out"
    (root / "tasks" / "t.toml").write_text('prompt = "an edited prompt"\n')
    show = json.loads(run_cli(root, "show", "t", "--json").stdout)
    assert show["task"]["prompt"] == "an edited prompt"
    assert show["last_run_prompt"]["prompt"] == "the original prompt"
    text = run_cli(root, "show", "t").stdout
    assert "prompt as run 1 used it" in text and "the original prompt" in text
