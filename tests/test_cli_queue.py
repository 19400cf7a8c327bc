"""Queue commands as a new user meets them: consistent states, readable `show` and `logs`, `add`, `init`,
`retry --failed`, `pause` / `resume`, and `validate` reporting every problem in one pass."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from coordinator.config import load_config
from coordinator.queue.claims import current_holder
from coordinator.scaffold import FLEET_TOML
from coordinator.store import open_store
from coordinator.store.base import Holder
from tests.conftest import coordinator_argv, subprocess_env
from tests.procs import record, run_cli
from tests.test_cli import QUICK_FLEET, assert_one_line_error, five_state_fleet, invoke, run_main, settle

INVALID = 'prompt = "x"\npriorty = 1\npriority = -1\nmax_attempts = 0\n'


# -- states --------------------------------------------------------------------------------------------------------


def test_tasks_state_invalid_lists_what_status_counts(make_fleet) -> None:
    root = make_fleet(QUICK_FLEET, {"a.toml": 'prompt = "a"\n', "bad.toml": INVALID, "syntax.toml": "nope\n"})
    counted = json.loads(invoke(root, "status", "--json").stdout)["tasks"]["invalid"]
    rows = json.loads(invoke(root, "tasks", "--state", "invalid", "--json").stdout)
    assert counted == 2 and len(rows) == 2
    assert [(r["id"], r["state"], r["source"]) for r in rows] == [("bad", "invalid", "tasks/bad.toml"),
                                                                  ("tasks/syntax.toml", "invalid", "tasks/syntax.toml")]
    assert rows[0]["reason"].startswith("tasks/bad.toml:")
    text = invoke(root, "tasks", "--state", "invalid").stdout.splitlines()
    assert text[1].split()[:6] == ["bad", "invalid", "-", "-", "-", "-"]


@pytest.mark.parametrize("command", ["show", "retry", "cancel"])
def test_show_retry_cancel_on_an_invalid_id_say_it_is_invalid(make_fleet, monkeypatch, capsys, command) -> None:
    root = make_fleet(QUICK_FLEET, {"bad.toml": INVALID})
    if command == "show":
        data = json.loads(invoke(root, "show", "bad", "--json").stdout)
        assert data["state"] == "invalid" and len(data["problems"]) == 3
        text = invoke(root, "show", "bad").stdout.splitlines()
        assert text[0].split() == ["bad", "invalid"]
        assert [line for line in text if line.startswith("problem: tasks/bad.toml:")] and len(
            [line for line in text if line.startswith("problem: ")]) == 3
        return
    code, out, err = run_main(monkeypatch, capsys, "-C", str(root), command, "bad")
    assert code == 2 and out == ""
    assert_one_line_error(err, "task 'bad' is invalid: tasks/bad.toml:", "coordinator validate")


def test_cancel_of_a_blocked_task_says_it_was_blocked(make_fleet) -> None:
    root = five_state_fleet(make_fleet)
    result = invoke(root, "cancel", "d-blocked")
    assert result.exit_code == 0, result.output
    assert result.stdout == "d-blocked: cancelled (it was blocked: dependency 'b-failed' failed)\n"


def test_retry_failed_requeues_every_failed_task(make_fleet) -> None:
    root = make_fleet(QUICK_FLEET, {f"{n}.toml": f'prompt = "{n}"\n' for n in ("a", "b", "c")})
    settle(root, "a", "failed", error="x")
    settle(root, "b", "done")
    settle(root, "c", "failed", error="y")
    result = invoke(root, "retry", "--failed")
    assert result.exit_code == 0, result.output
    assert result.stdout == "a: pending\nc: pending\n"
    assert [record(root, t)["state"] for t in ("a", "b", "c")] == ["pending", "done", "pending"]
    assert invoke(root, "retry", "--failed").stdout == "no failed task\n"


def test_subprocess_pause_and_resume_show_in_status(make_fleet) -> None:
    root = make_fleet(QUICK_FLEET, {"a.toml": 'prompt = "a"\n'})
    assert run_cli(root, "pause").stdout == "paused: agents claim no new task; running tasks finish\n"
    assert run_cli(root, "pause").stdout == "already paused\n"
    assert json.loads(run_cli(root, "status", "--json").stdout)["paused"] is True
    assert "paused: agents claim no new task" in run_cli(root, "status").stdout
    assert open_store(load_config(root)).is_paused()
    assert run_cli(root, "resume").stdout == "resumed: agents claim tasks again\n"
    assert json.loads(run_cli(root, "status", "--json").stdout)["paused"] is False
    assert run_cli(root, "agent", "--until-empty").returncode == 0
    assert record(root, "a")["state"] == "done"


# -- show and logs -------------------------------------------------------------------------------------------------


def test_show_formats_usage_and_timestamps_history_with_cancelled_attempts(make_fleet) -> None:
    root = make_fleet(QUICK_FLEET, {"a.toml": 'prompt = "a"\n', "b.toml": 'prompt = "b"\n'})
    store = open_store(load_config(root))
    claim = store.claim("a", current_holder("tester"), lease_s=30)
    store.finish(claim, ok=True, max_attempts=3, usage={
        "requests": 3, "input_tokens": 1234, "output_tokens": 567, "cache_read_tokens": 890,
        "cache_write_tokens": 111, "usd": 0.01234, "usd_saved": 0.0456})
    lines = invoke(root, "show", "a").stdout.splitlines()
    assert "usage: 1,234 in / 567 out tokens, cache 890 read / 111 written, $0.0123 (saved $0.0456), " \
           "3 request(s)" in lines
    (history,) = [line for line in lines if line.startswith("  attempt ")]
    assert re.fullmatch(r"  attempt 1 \(run 1\): done by tester at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+\.\ds\)",
                        history), history
    dead = subprocess.Popen(["true"])  # a pid that has exited: cancel signals no one (not this test process)
    dead.wait()
    holder = Holder(agent="tester", pid=dead.pid, pid_started_at=0.0, host=current_holder("x").host)
    assert store.claim("b", holder, lease_s=30) is not None
    assert invoke(root, "cancel", "b").exit_code == 0
    cancelled = [line for line in invoke(root, "show", "b").stdout.splitlines() if line.startswith("  attempt ")]
    assert len(cancelled) == 1 and re.fullmatch(
        r"  attempt 1 \(run 1\): cancelled by tester at \S+ \S+ \(\d+\.\ds\) — cancelled while running", cancelled[0])


def test_logs_acceptance_prints_acceptance_log(make_fleet, monkeypatch, capsys) -> None:
    root = make_fleet(QUICK_FLEET, {"t.toml": 'prompt = "t"\n'})
    folder = root / ".coordinator" / "runs" / "t" / "1"
    folder.mkdir(parents=True)
    (folder / "stdout.log").write_text("out\n")
    code, out, err = run_main(monkeypatch, capsys, "-C", str(root), "logs", "t", "--acceptance")
    assert code == 2
    assert_one_line_error(err, "has no acceptance.log")
    (folder / "acceptance.log").write_text("3 passed\n")
    assert invoke(root, "logs", "t", "--acceptance").stdout == "3 passed\n"


def test_subprocess_logs_follow_without_a_fleet_says_it_is_waiting(make_fleet) -> None:
    root = make_fleet(QUICK_FLEET, {"t.toml": 'prompt = "t"\n'})
    proc = subprocess.Popen(coordinator_argv("-C", str(root), "logs", "-f", "t"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env(), start_new_session=True)
    try:
        line = proc.stderr.readline()
        assert line == "waiting for a fleet to run t (start one with `coordinator run`); Ctrl-C to stop\n"
        assert proc.poll() is None, "it keeps waiting"
    finally:
        proc.kill()
        proc.wait()


# -- add -----------------------------------------------------------------------------------------------------------


def test_add_keeps_priority_names_and_numbers_as_written(make_fleet) -> None:
    root = make_fleet(QUICK_FLEET)
    for prompt, priority, expected in (("one", "HIGH", "high"), ("two", "low", "low"), ("three", "7", 7)):
        assert invoke(root, "add", prompt, "--priority", priority).exit_code == 0
        assert tomllib.loads((root / "tasks" / f"{prompt}.toml").read_text())["priority"] == expected
    rows = {r["id"]: r["priority"] for r in json.loads(invoke(root, "tasks", "--json").stdout)}
    assert rows == {"one": 1, "two": 3, "three": 7}


def test_add_depends_on_an_unknown_id_warns_on_stderr_and_exits_0(make_fleet, monkeypatch, capsys) -> None:
    root = make_fleet(QUICK_FLEET, {"a.toml": 'prompt = "a"\n'})
    code, out, err = run_main(monkeypatch, capsys, "-C", str(root), "add", "x", "--depends-on", "a",
                              "--depends-on", "ghost")
    assert code == 0 and out == "added x (tasks/x.toml)\n"
    assert err == ("warning: x depends on 'ghost', which is not a known task; it stays blocked until a task "
                   "with that id exists\n")


def test_add_reads_the_prompt_from_a_file_or_stdin(make_fleet, tmp_path: Path, monkeypatch, capsys) -> None:
    root = make_fleet(QUICK_FLEET)
    prompt_file = tmp_path / "prompt.md"
    prompt_file.write_text("Review the [auth] module.\nLine two.\n")
    assert invoke(root, "add", "--file", str(prompt_file), "--id", "review").exit_code == 0
    assert tomllib.loads((root / "tasks" / "review.toml").read_text())["prompt"] == prompt_file.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO("From stdin\n"))
    code, out, _ = run_main(monkeypatch, capsys, "-C", str(root), "add", "--file", "-")
    assert code == 0 and out == "added from-stdin (tasks/from-stdin.toml)\n"
    code, _, err = run_main(monkeypatch, capsys, "-C", str(root), "add", "--file", str(tmp_path / "missing"))
    assert code == 2
    assert_one_line_error(err, "--file: cannot read", "No such file")


# -- init and the README -------------------------------------------------------------------------------------------


def test_init_appends_to_an_existing_gitignore_once(tmp_path: Path) -> None:
    target = tmp_path / "proj"
    target.mkdir()
    (target / ".gitignore").write_text("node_modules")
    assert invoke(target, "init", str(target)).exit_code == 0
    assert (target / ".gitignore").read_text().splitlines() == [
        "node_modules", "# coordinator state: claims, logs, the gateway's token", ".coordinator/"]
    assert invoke(target, "init", "--force", str(target)).exit_code != 0  # the example tasks exist now
    ignored = subprocess.run(["git", "check-ignore", "-q", ".coordinator/x"], cwd=target, capture_output=True)
    if ignored.returncode != 128:  # 128: git is missing or this is no repository; the text check above suffices
        assert ignored.returncode == 0


def test_init_fleet_toml_cites_only_files_it_writes() -> None:
    cited = set(re.findall(r"[\w./*-]+\.md\b", FLEET_TOML))
    assert cited == {"context/*.md"}
    assert "DESIGN" not in FLEET_TOML and "docs/" not in FLEET_TOML


def test_readme_claude_example_lists_the_offline_environment_and_step_2_works_in_a_new_shell() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    claude = readme[readme.index("[agents.claude]"):]
    claude = claude[:claude.index("```")]
    for name in ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_AUTOUPDATER"):
        assert name in claude, name
    step2 = readme[readme.index("# 2."):]
    step2 = step2[:step2.index("```")]
    assert ".venv/bin/python -m pytest" in step2 or ". .venv/bin/activate" in step2


# -- validate ------------------------------------------------------------------------------------------------------


def test_validate_reports_every_problem_of_a_task_in_text_and_json(make_fleet) -> None:
    root = make_fleet(QUICK_FLEET, {"bad.toml": INVALID, "ok.toml": 'prompt = "ok"\n'})
    result = invoke(root, "validate")
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        "invalid: tasks/bad.toml:2: priorty: unknown key; remove it or check its spelling (did you mean 'priority'?)",
        "invalid: tasks/bad.toml:3: priority: must be 0 or more (0 runs first), or one of critical, high, normal, "
        "low (got -1)",
        "invalid: tasks/bad.toml:4: max_attempts: Input should be greater than or equal to 1 (got 0)",
        "1 valid task(s), 1 invalid",
    ], "every problem, in file order"
    assert "more problem" not in result.stdout
    (entry,) = json.loads(invoke(root, "validate", "--json").stdout)["invalid"]
    assert sorted(p["line"] for p in entry["problems"]) == [2, 3, 4]
    assert {p["field"] for p in entry["problems"]} == {"priorty", "priority", "max_attempts"}
    assert json.loads(invoke(root, "status", "--json").stdout)["tasks"]["invalid"] == 1, "one task, counted once"


def test_validate_warns_about_context_that_matches_no_file_unless_a_dependency_may_write_it(make_fleet) -> None:
    root = make_fleet("", {"lonely.toml": 'prompt = "x"\ncontext = ["notes/*.md"]\n',
                           "first.toml": 'prompt = "write notes"\n',
                           "later.toml": 'prompt = "y"\ncontext = ["notes/*.md"]\ndepends_on = ["first"]\n'})
    result = invoke(root, "validate")
    assert result.exit_code == 0, "a warning is no error: the file may be created before the task runs"
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert warnings == ["warning: tasks/lonely.toml: context: pattern 'notes/*.md' matches no file yet; every "
                        "attempt of the llm runner fails until it does (fix the pattern, create the file, or depend "
                        "on the task that writes it)"]
    data = json.loads(invoke(root, "validate", "--json").stdout)
    assert [(w["id"], w["field"]) for w in data["warnings"]] == [("lonely", "context")]
    (root / "notes").mkdir()
    (root / "notes" / "a.md").write_text("hi\n")
    assert "warning:" not in invoke(root, "validate").stdout


def test_validate_one_file_knows_dependencies_defined_in_other_files(make_fleet) -> None:
    root = make_fleet(QUICK_FLEET, {"outline.toml": 'prompt = "o"\n',
                                    "summary.toml": 'prompt = "s"\ndepends_on = ["outline"]\n',
                                    "typo.toml": 'prompt = "t"\ndepends_on = ["outlin"]\n'})
    result = invoke(root, "validate", str(root / "tasks" / "summary.toml"))
    assert result.exit_code == 0
    assert result.stdout == "1 valid task(s), 0 invalid\n"
    typo = invoke(root, "validate", str(root / "tasks" / "typo.toml"))
    assert typo.stdout.splitlines()[0].startswith("blocked: typo: dependency 'outlin' is not a known task")
    clash = root / "zz-elsewhere.toml"  # after tasks/outline.toml in path order, so the fleet's file keeps the id
    clash.write_text('id = "outline"\nprompt = "again"\n')
    assert "duplicate id 'outline'" in invoke(root, "validate", str(clash)).stdout


BROKEN_FLEET = """[fleet]
agnets = 3
lease_s = "long"

[agents.c]
kind = "command"
comand = ["x"]

[gatway]
"""


def test_validate_reports_every_fleet_toml_problem_and_other_commands_one_line(make_fleet, monkeypatch,
                                                                                capsys) -> None:
    root = make_fleet(BROKEN_FLEET, {"a.toml": 'prompt = "a"\n'})
    path = root / "fleet.toml"
    code, out, err = run_main(monkeypatch, capsys, "-C", str(root), "validate")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"error: {path}:2: fleet.agnets: unknown key; remove it or check its spelling (did you mean 'agents'?)",
        f"error: {path}:3: fleet.lease_s: must be a number (got 'long')",
        f"error: {path}:7: agents.c.comand: unknown key; remove it or check its spelling (did you mean 'command'?)",
        f"error: {path}:9: gatway: unknown key; remove it or check its spelling (did you mean 'gateway'?)",
    ]
    data = json.loads(invoke(root, "validate", "--json").stdout)
    assert [c["field"] for c in data["config"]] == ["fleet.agnets", "fleet.lease_s", "agents.c.comand", "gatway"]
    code, out, err = run_main(monkeypatch, capsys, "-C", str(root), "status")
    assert code == 2
    assert_one_line_error(err, f"{path}:2: fleet.agnets: unknown key", "(3 more: run `coordinator validate`)")


def test_fleet_toml_reference_errors_are_all_reported(make_fleet, monkeypatch, capsys) -> None:
    root = make_fleet('[fleet]\ndefault_agent = "lm"\n[models.fast]\nbackend = "defualt"\n'
                      '[agents.c]\nkind = "command"\n')
    code, _, err = run_main(monkeypatch, capsys, "-C", str(root), "validate")
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 3
    assert "fleet.default_agent: agent 'lm' is not defined; add [agents.lm] (did you mean 'llm'?)" in lines[0]
    assert any("models.fast.backend: backend 'defualt' is not defined" in line and "did you mean 'default'" in line
               for line in lines)
    assert any("agents.c.command: a command agent needs command" in line for line in lines)
