"""What `run` and `status --watch` print without a terminal, `--help` and `--version`, and exit codes.

The rough edges of issue 10, each pinned: the exact line `run` prints per finished
task, agent crash and restart notices from the event feed, a summary of this run's
figures naming what needs attention, `status --watch` into a pipe (snapshots, JSON
lines, a reader that goes away), help texts with their bracketed words, and the
exit codes 1 (failed work) and 2 (bad input, unknown id or run).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from coordinator.config import load_config
from coordinator.report.events import TaskOutcome, outcome_state, since
from coordinator.store import open_store
from coordinator.ui.dashboard import notice_line, outcome_line, summary_table
from coordinator.ui.live import FleetDisplay
from tests.conftest import coordinator_argv, subprocess_env
from tests.procs import run_cli
from tests.test_cli import assert_one_line_error, run_main
from tests.test_dashboard import make_status, render

MIXED_FLEET = """
[fleet]
default_agent = "ok"
heartbeat_s = 0.2

[agents.ok]
kind = "command"
command = ["true"]

[agents.no]
kind = "command"
command = ["false"]
"""
MIXED_TASKS = {"ok.toml": 'prompt = "ok"\n',
               "fails.toml": 'prompt = "f"\nagent = "no"\nmax_attempts = 1\n',
               "after.toml": 'prompt = "a"\ndepends_on = ["fails"]\n',
               "broken.toml": "prompt = 3\n",
               "gone.toml": 'prompt = "g"\n'}
STAMP = r"\[\s*\d+\.\ds\] "


# -- run without a terminal ----------------------------------------------------------------------------------------


def test_subprocess_run_prints_each_finished_task_and_a_summary_naming_what_failed(make_fleet) -> None:
    root = make_fleet(MIXED_FLEET, MIXED_TASKS)
    assert run_cli(root, "cancel", "gone").returncode == 0
    result = run_cli(root, "run", "--until-empty", "--no-dashboard")
    assert result.returncode == 1, "failed, blocked and invalid tasks make the run exit 1"
    lines = result.stdout.splitlines()
    assert [line for line in lines if re.fullmatch(STAMP + r"ok done \(attempt 1/3, \$0\.0000\)", line)]
    assert [line for line in lines if re.fullmatch(
        STAMP + r"fails failed \(attempt 1/1, \$0\.0000\) — command exited with code 1", line)], lines
    progress = [line for line in lines if " finished: " in line]
    assert progress and progress[-1].split("] ", 1)[1] == (
        "3/4 finished: done 1 failed 1 cancelled 1 running 0 pending 0 blocked 1 invalid 1 | requests 0 "
        "upstream 0 saved $0.0000")
    assert "failed: fails — command exited with code 1" in lines
    assert "blocked: after — dependency 'fails' failed" in lines
    assert any(line.startswith("invalid: tasks/broken.toml:1: prompt: must be a string") for line in lines)


def test_subprocess_run_summary_shows_this_runs_figures_not_lifetime_totals(make_fleet) -> None:
    root = make_fleet(MIXED_FLEET, {"a.toml": 'prompt = "a"\n', "b.toml": 'prompt = "b"\n'})
    first = run_cli(root, "run", "--until-empty", "--no-dashboard")
    assert first.returncode == 0, first.stderr
    assert "done      2" in [line.rstrip() for line in first.stdout.splitlines()]
    assert run_cli(root, "retry", "a").returncode == 0
    second = run_cli(root, "run", "--until-empty", "--no-dashboard")
    assert second.returncode == 0, second.stderr
    summary = [line.rstrip() for line in second.stdout.splitlines()]
    assert "done      1" in summary, summary
    assert any(re.fullmatch(STAMP + r"a done \(attempt 1/3, \$0\.0000\)", line) for line in summary)
    assert not any(line.startswith(("[", )) and " b done " in line for line in summary), "b did not run again"


def test_outcome_and_notice_lines_are_exact() -> None:
    assert outcome_line(TaskOutcome("t1", "done", 1, 3, 0.00123), 3.21) == "[    3.2s] t1 done (attempt 1/3, $0.0012)"
    assert outcome_line(TaskOutcome("t2", "retrying", 2, 3, 0.5, "acceptance 'false' exited with code 1"),
                        12.0) == "[   12.0s] t2 retrying (attempt 2/3, $0.5000) — acceptance 'false' exited with code 1"
    assert outcome_line(TaskOutcome("gone", "cancelled", 0, None, 0.0), 1.0) == \
        "[    1.0s] gone cancelled (attempt 0, $0.0000)"
    exited = {"event": "agent_exited", "agent": "agent-2", "pid": 41, "code": -9, "restart_in_s": 0.5}
    assert notice_line(exited, 2.0) == "[    2.0s] agent agent-2 (pid 41) exited with code -9; restarting in 0.5s"
    hung = {"event": "agent_hung", "agent": "agent-1", "pid": 40, "heartbeat_age_s": 31.5}
    assert notice_line(hung, 2.0) == "[    2.0s] agent agent-1 (pid 40) hung (no heartbeat for 31.5s); killed"
    spawned = {"event": "agent_spawned", "agent": "agent-2", "pid": 42, "restarts": 1}
    assert notice_line(spawned, 2.5) == "[    2.5s] agent agent-2 (pid 42) restarted (restart 1)"


def test_plain_display_prints_outcomes_and_agent_restarts_from_the_event_feed(make_fleet) -> None:
    root = make_fleet(MIXED_FLEET, {"t1.toml": 'prompt = "x"\n'})
    config = load_config(root)
    out = io.StringIO()
    display = FleetDisplay(config, Console(file=out, width=200), live=False)
    store = open_store(config)
    store.append_event("agent_spawned", agent="agent-1", pid=10, restarts=0)  # a first start is no news
    store.append_event("agent_exited", agent="agent-1", pid=10, code=1, restart_in_s=0.5)
    store.append_event("agent_spawned", agent="agent-1", pid=11, restarts=1)
    from coordinator.queue.claims import current_holder

    claim = store.claim("t1", current_holder("agent-1"), lease_s=30)
    store.finish(claim, ok=True, max_attempts=3, usage={"usd": 0.25})
    with display:
        display.update(force=True)
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines[:3] == ["agent agent-1 (pid 10) exited with code 1; restarting in 0.5s",
                         "agent agent-1 (pid 11) restarted (restart 1)",
                         "t1 done (attempt 1/3, $0.2500)"]
    assert lines[3].startswith("1/1 finished: done 1 failed 0 cancelled 0 ")
    display.update(force=True)
    assert len(out.getvalue().splitlines()) == 4, "each event is printed once, an unchanged progress line never"


def test_summary_collapsed_is_joined_plus_hits_never_negative() -> None:
    gateway = {**make_status()["gateway"], "requests": 21, "upstream_calls": 29, "dedup_joined": 0,
               "dedup_hits": 0}
    lines = [line.strip() for line in render(summary_table(make_status(gateway=gateway), 1.0))]
    assert "requests   21 (29 upstream, 0 collapsed: 0 joined, 0 cache hits)" in lines


def test_summary_names_failed_and_blocked_tasks() -> None:
    attention = {"failed": [{"id": "b", "reason": "command exited with code 1"}],
                 "blocked": [{"id": "d", "reason": "dependency 'b' failed"}], "invalid": []}
    lines = [line.strip() for line in render(summary_table(make_status(invalid_files=[]), 1.0, attention))]
    assert lines[-2:] == ["failed: b — command exited with code 1", "blocked: d — dependency 'b' failed"]


def test_since_subtracts_the_baseline_and_is_never_negative() -> None:
    baseline = make_status()
    now = make_status()
    now["gateway"] = {**now["gateway"], "requests": 45, "upstream_calls": 13, "usd": 0.2234}
    now["tasks"] = {**now["tasks"], "done": 9, "failed": 1}  # a failed task was retried by hand meanwhile
    run = since(baseline, now)
    assert (run["gateway"]["requests"], run["gateway"]["upstream_calls"]) == (5, 0)
    assert run["gateway"]["usd"] == pytest.approx(0.1)
    assert (run["tasks"]["done"], run["tasks"]["failed"], run["tasks"]["pending"]) == (2, 0, 3)
    assert run["gateway"]["url"] == now["gateway"]["url"] and run["gateway"]["running"] is True


def test_watch_on_a_terminal_says_how_to_stop(make_fleet) -> None:
    root = make_fleet(MIXED_FLEET)
    out = io.StringIO()
    display = FleetDisplay(load_config(root), Console(file=out, width=120, force_terminal=True), live=True,
                           watching=True)
    with display:
        display.update(force=True)
    assert "Ctrl-C to stop" in out.getvalue()
    plain = io.StringIO()
    with FleetDisplay(load_config(root), Console(file=plain, width=120), live=False, watching=True):
        pass
    assert plain.getvalue().splitlines()[0] == "watching tasks/ for new files; Ctrl-C to stop"


# -- status --watch into a pipe ------------------------------------------------------------------------------------


def watch(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(coordinator_argv("-C", str(root), "status", "--watch", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env(), start_new_session=True)


def test_subprocess_status_watch_into_a_pipe_prints_snapshots_and_exits_when_the_reader_goes(make_fleet) -> None:
    root = make_fleet(MIXED_FLEET, {"a.toml": 'prompt = "a"\n', "broken.toml": "prompt = 3\n"})
    proc = watch(root)
    try:
        first = [proc.stdout.readline() for _ in range(6)]
        assert first[0].startswith("-- ")
        assert first[1].split() == ["tasks", "pending", "1", "blocked", "0", "running", "0", "done", "0", "failed",
                                    "0", "invalid", "1", "cancelled", "0"]
        invalid = next(line for line in first if line.startswith("invalid: "))
        assert invalid.rstrip("\n").endswith('must be a string, in quotes: "..." (got 3)'), "never wrapped at 80"
        second = proc.stdout.readline()
        while not second.startswith("-- "):
            second = proc.stdout.readline()
        proc.stdout.close()  # the reader goes away, as with `| head`
        assert proc.wait(timeout=30) == 0
        assert proc.stderr.read() == ""
    finally:
        proc.kill()
        proc.wait()


def test_subprocess_status_watch_json_into_a_pipe_prints_json_lines(make_fleet) -> None:
    root = make_fleet(MIXED_FLEET, {"a.toml": 'prompt = "a"\n'})
    proc = watch(root, "--json")
    try:
        reports = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert all(r["tasks"]["pending"] == 1 and r["paused"] is False for r in reports)
    finally:
        proc.kill()
        proc.wait()


# -- help and version ----------------------------------------------------------------------------------------------


def test_subprocess_help_keeps_bracketed_words_and_shows_no_bool_metavar(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "run", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # help is wrapped to the terminal: compare words
    assert "Agent processes (default: [fleet].agents)." in text
    assert "Run tasks that name no agent with this [agents.NAME]." in text
    assert "<bool>" not in result.stdout
    assert "1 when any failed, is blocked or invalid" in text
    add = run_cli(tmp_path, "add", "--help")
    assert "An [agents.NAME] from fleet.toml." in " ".join(add.stdout.split())


def test_subprocess_version(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--version")
    assert result.returncode == 0
    assert re.fullmatch(r"coordinator \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


# -- exit codes ----------------------------------------------------------------------------------------------------


def test_logs_unknown_run_is_exit_2_even_when_following(make_fleet, monkeypatch, capsys) -> None:
    root = make_fleet(MIXED_FLEET, {"t.toml": 'prompt = "t"\n'})
    folder = root / ".coordinator" / "runs" / "t" / "1"
    folder.mkdir(parents=True)
    (folder / "stdout.log").write_text("one\n")
    for args in (("logs", "t", "--run", "99"), ("logs", "-f", "t", "--run", "99")):
        code, out, err = run_main(monkeypatch, capsys, "-C", str(root), *args)
        assert code == 2 and out == "", args
        assert_one_line_error(err, "task 't' has no run 99 (runs: 1)")


def test_subprocess_logs_follow_unknown_run_exits_2(make_fleet) -> None:
    root = make_fleet(MIXED_FLEET, {"t.toml": 'prompt = "t"\n'})
    result = run_cli(root, "logs", "-f", "t", "--run", "99", timeout=30)
    assert result.returncode == 2 and result.stdout == ""
    assert_one_line_error(result.stderr, "has no run 99")


@pytest.mark.parametrize(("args", "needle"), [
    (("retry",), "ID: name one task ID, or pass --failed"),
    (("retry", "a", "--failed"), "ID: name one task ID, or pass --failed"),
    (("add",), "PROMPT: give the prompt as an argument or with --file"),
    (("show", "nope"), "no task 'nope'"),
    (("cancel", "nope"), "no task 'nope'"),
])
def test_bad_input_and_unknown_ids_are_exit_2(make_fleet, monkeypatch, capsys, args, needle: str) -> None:
    root = make_fleet(MIXED_FLEET, {"a.toml": 'prompt = "a"\n'})
    code, out, err = run_main(monkeypatch, capsys, "-C", str(root), *args)
    assert code == 2 and out == ""
    assert_one_line_error(err, needle)


def test_workspace_events_end_attempts_in_the_plain_view() -> None:
    assert outcome_state({"event": "landed", "task": "t"}) == "done"
    assert outcome_state({"event": "conflict", "task": "t", "state": "pending"}) == "conflict"
    assert outcome_state({"event": "gate_failed", "task": "t", "state": "failed"}) == "failed"
    assert outcome_line(TaskOutcome("t3", "conflict", 1, 3, 0.0, "merge conflict in a.txt"), 4.0) == \
        "[    4.0s] t3 conflict (attempt 1/3, $0.0000) — merge conflict in a.txt"
