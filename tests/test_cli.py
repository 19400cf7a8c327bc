"""The command line, tested twice: in-process for logic, and one real subprocess per command.

In-process tests drive ``coordinator.cli.app`` with Typer's ``CliRunner``. Error
cases go through ``cli.main`` instead, because that is where a ``CoordinatorError``
becomes one line on stderr and an exit code; ``CliRunner`` calls ``app`` directly
and would only see the exception. States such as done, failed or claimed are
built with the real claim protocol (``ClaimBook``) on real files.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordinator.liveness import process_is_alive
from coordinator.queue.claims import current_holder
from coordinator.cli import app, main
from coordinator.config import load_config
from coordinator.fleet.workspace import run_dirs
from coordinator.store import open_store
from tests.conftest import coordinator_argv, subprocess_env
from tests.procs import events, record, run_cli, start_agent, stop, wait_for, write_ledger_fleet, write_tasks

COMMANDS = ("init", "run", "status", "add", "tasks", "show", "logs", "retry", "cancel", "validate", "schema",
            "agent", "gateway")
ROW_KEYS = {"id", "state", "priority", "title", "attempts", "max_attempts", "agent", "source", "reason", "worker"}

QUICK_FLEET = """
[fleet]
default_agent = "quick"
heartbeat_s = 0.2

[agents.quick]
kind = "command"
command = ["true"]
"""

runner = CliRunner()


# -- helpers -----------------------------------------------------------------------------------------------------


def invoke(root: Path, *args: str):  # noqa: ANN201  (click's Result)
    """Run one command in-process; unexpected exceptions surface in the assertion message."""
    return runner.invoke(app, ["-C", str(root), *args])


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run ``cli.main`` in-process as the console script would: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["coordinator", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    code = exited.value.code
    return (0 if code is None else int(code)), out.out, out.err


def assert_one_line_error(err: str, *needles: str) -> None:
    """Exactly one non-empty line, starting ``error:``, holding every needle, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def settle(root: Path, task_id: str, state: str, *, error: str | None = None) -> None:
    """Claim ``task_id`` as this process and finish it ``done`` or ``failed``, through the real protocol."""
    store = open_store(load_config(root))
    claim = store.claim(task_id, current_holder("tester"), lease_s=30)
    assert claim is not None, f"{task_id} was not claimable"
    store.finish(claim, ok=state == "done", error=error, max_attempts=1)


def hold(root: Path, task_id: str) -> None:
    """Claim ``task_id`` as this (live) process and keep the claim: the task shows as running."""
    store = open_store(load_config(root))
    assert store.claim(task_id, current_holder("tester"), lease_s=30) is not None


def tmp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


# -- add ---------------------------------------------------------------------------------------------------------


def test_add_writes_a_toml_task_file_named_after_the_prompt(make_fleet, monkeypatch, capsys) -> None:
    root = make_fleet(QUICK_FLEET)
    result = invoke(root, "add", "Fix the flaky login test!", "--priority", "high")
    assert result.exit_code == 0, result.output
    assert result.stdout == "added fix-the-flaky-login-test (tasks/fix-the-flaky-login-test.toml)\n"
    path = root / "tasks" / "fix-the-flaky-login-test.toml"
    assert tomllib.loads(path.read_text()) == {"prompt": "Fix the flaky login test!", "priority": "high"}
    before = path.read_bytes()
    # The same prompt again is an error naming the existing task, never a silent "-2" copy.
    code, out, err = run_main(monkeypatch, capsys, "-C", str(root), "add", "Fix the flaky login test!")
    assert code == 2 and out == ""
    assert_one_line_error(err, "'fix-the-flaky-login-test'", "tasks/fix-the-flaky-login-test.toml", "--id")
    assert path.read_bytes() == before, "an existing task file is never rewritten"
    again = invoke(root, "add", "Fix the flaky login test!", "--id", "fix-login-again")
    assert again.exit_code == 0, again.output
    assert "added fix-login-again " in again.stdout
    assert tomllib.loads((root / "tasks" / "fix-login-again.toml").read_text())["priority"] == "normal"
    assert tmp_leftovers(root / "tasks") == []
    listed = json.loads(invoke(root, "tasks", "--json").stdout)
    assert [row["id"] for row in listed] == ["fix-the-flaky-login-test", "fix-login-again"]


def test_add_with_id_repeated_depends_on_agent_and_numeric_priority(make_fleet) -> None:
    root = make_fleet(QUICK_FLEET, {"a.toml": 'prompt = "a"\n', "b.toml": 'prompt = "b"\n'})
    result = invoke(root, "add", "Merge a and b", "--id", "merge", "--depends-on", "a", "--depends-on", "b",
                    "--agent", "quick", "--priority", "7")
    assert result.exit_code == 0, result.output
    data = tomllib.loads((root / "tasks" / "merge.toml").read_text())
    assert data == {"prompt": "Merge a and b", "priority": 7, "depends_on": ["a", "b"], "agent": "quick"}
    shown = json.loads(invoke(root, "show", "merge", "--json").stdout)
    assert shown["task"]["depends_on"] == ["a", "b"] and shown["task"]["priority"] == 7


def test_add_id_clash_is_one_line_exit_2_and_never_overwrites(make_fleet, monkeypatch, capsys) -> None:
    root = make_fleet(QUICK_FLEET, {"a.toml": 'prompt = "original"\n',
                                    "arr.toml": '[[tasks]]\nid = "inner"\nprompt = "x"\n',
                                    "broken.toml": 'prompt = "never closed\n'})
    originals = {p.name: p.read_bytes() for p in (root / "tasks").iterdir()}
    code, out, err = run_main(monkeypatch, capsys, "-C", str(root), "add", "new text", "--id", "a")
    assert code == 2 and out == ""
    assert_one_line_error(err, "'a' already exists", "tasks/a.toml", "--id")
    code, _, err = run_main(monkeypatch, capsys, "-C", str(root), "add", "new text", "--id", "inner")
    assert code == 2
    assert_one_line_error(err, "'inner' already exists", "tasks/arr.toml")
    # A file that is not a valid task still owns its name.
    code, _, err = run_main(monkeypatch, capsys, "-C", str(root), "add", "new text", "--id", "broken")
    assert code == 2
    assert_one_line_error(err, "tasks/broken.toml already exists")
    assert {p.name: p.read_bytes() for p in (root / "tasks").iterdir()} == originals
    assert tmp_leftovers(root / "tasks") == []


@pytest.mark.parametrize("priority", ["urgent", "-1", "1.5", ""])
def test_add_bad_priority_is_exit_2(make_fleet, monkeypatch, capsys, priority: str) -> None:
    root = make_fleet(QUICK_FLEET)
    code, _, err = run_main(monkeypatch, capsys, "-C", str(root), "add", "x", "--priority", priority)
    assert code == 2
    assert_one_line_error(err, "--priority", "critical, high, normal, low")
    assert list((root / "tasks").iterdir()) == []


def test_priority_names_follow_one_rule_in_files_and_add(make_fleet, monkeypatch, capsys) -> None:
    """``HIGH`` means high in a task file and in ``add --priority`` alike (one rule, tasks.model)."""
    root = make_fleet(QUICK_FLEET, {"loud.toml": 'prompt = "x"\npriority = "HIGH"\n'})
    code, out, err = run_main(monkeypatch, capsys, "-C", str(root), "add", "y", "--id", "y", "--priority", "HIGH")
    assert code == 0, err
    rows = {row["id"]: row["priority"] for row in json.loads(run_main(monkeypatch, capsys, "-C", str(root),
                                                                            "tasks", "--json")[1])}
    assert rows == {"loud": 1, "y": 1}


@pytest.mark.parametrize(("args", "needle"), [
    (("x", "--id", "has space"), "--id: 'has space' is not a task id"),
    (("x", "--id", "-dash-first"), "--id: '-dash-first' is not a task id"),
    (("x", "--id", "abc\n"), "--id: 'abc\\n' is not a task id"),
    (("x", "--depends-on", "abc\n"), "--depends-on: 'abc\\n' is not a task id"),
    (("x", "--agent", "nobody"), "--agent: agent 'nobody' is not defined"),
    (("x", "--depends-on", "not an id"), "--depends-on: 'not an id' is not a task id"),
    (("",), "PROMPT: the prompt is empty"),
    ((" \n ",), "PROMPT: the prompt is empty"),
])
def test_add_bad_arguments_are_exit_2(make_fleet, monkeypatch, capsys, args: tuple[str, ...], needle: str) -> None:
    root = make_fleet(QUICK_FLEET)
    code, _, err = run_main(monkeypatch, capsys, "-C", str(root), "add", *args)
    assert code == 2
    assert_one_line_error(err, needle)
    assert list((root / "tasks").iterdir()) == []


# -- tasks and show ----------------------------------------------------------------------------------------------


def five_state_fleet(make_fleet) -> Path:
    """Tasks in states done, failed, blocked (on the failed one), cancelled and pending."""
    root = make_fleet(QUICK_FLEET, {"a-done.toml": 'prompt = "a"\npriority = 0\n',
                                    "b-failed.toml": 'prompt = "b"\npriority = 1\n',
                                    "c-pending.toml": 'prompt = "c"\npriority = 2\n',
                                    "d-blocked.toml": 'prompt = "d"\npriority = 3\ndepends_on = ["b-failed"]\n',
                                    "e-cancelled.toml": 'prompt = "e"\npriority = 3\n'})
    settle(root, "a-done", "done")
    settle(root, "b-failed", "failed", error="command exited with code 1")
    assert invoke(root, "cancel", "e-cancelled").exit_code == 0
    return root


def test_tasks_filters_by_state_and_json_keys_are_stable(make_fleet) -> None:
    root = five_state_fleet(make_fleet)
    rows = json.loads(invoke(root, "tasks", "--json").stdout)
    assert [(r["id"], r["state"]) for r in rows] == [("a-done", "done"), ("b-failed", "failed"),
                                                     ("c-pending", "pending"), ("d-blocked", "blocked"),
                                                     ("e-cancelled", "cancelled")]
    assert all(set(r) == ROW_KEYS for r in rows)
    failed = next(r for r in rows if r["id"] == "b-failed")
    assert failed["attempts"] == 1 and failed["worker"] == "tester" and failed["source"] == "tasks/b-failed.toml"
    assert failed["agent"] == "quick", "AGENT is what the task runs on: the fleet's default_agent here"
    assert failed["reason"] == "command exited with code 1"
    assert "b-failed" in next(r for r in rows if r["id"] == "d-blocked")["reason"]
    for state, expected in (("done", ["a-done"]), ("failed", ["b-failed"]), ("blocked", ["d-blocked"]),
                            ("cancelled", ["e-cancelled"]), ("pending", ["c-pending"]), ("running", [])):
        result = invoke(root, "tasks", "--state", state, "--json")
        assert result.exit_code == 0, result.output
        assert [r["id"] for r in json.loads(result.stdout)] == expected, state
    text = invoke(root, "tasks", "--state", "failed").stdout.splitlines()
    assert text[0].split() == ["ID", "STATE", "PRI", "TRIES", "AGENT", "WORKER", "TITLE", "/", "REASON"]
    assert text[1].split()[:6] == ["b-failed", "failed", "1", "1/3", "quick", "tester"]
    assert text[1].endswith("b — command exited with code 1") and len(text) == 2
    assert invoke(root, "tasks", "--state", "running").stdout.splitlines()[1] == "no tasks"
    bad = invoke(root, "tasks", "--state", "finished")
    assert bad.exit_code == 2 and "'finished' is not one of pending" in bad.output


def test_show_json_has_task_state_reason_record_and_claim(make_fleet) -> None:
    root = five_state_fleet(make_fleet)
    data = json.loads(invoke(root, "show", "b-failed", "--json").stdout)
    assert {"task", "state", "reason", "record", "claim"} <= set(data)
    assert data["task"]["id"] == "b-failed" and data["task"]["source"] == "tasks/b-failed.toml"
    assert (data["state"], data["reason"], data["claim"]) == ("failed", "command exited with code 1", None)
    assert data["record"]["attempts"] == 1 and data["record"]["history"][0]["outcome"] == "failed"
    blocked = json.loads(invoke(root, "show", "d-blocked", "--json").stdout)
    assert blocked["state"] == "blocked" and "b-failed" in blocked["reason"] and blocked["record"] is None
    hold(root, "c-pending")
    running = json.loads(invoke(root, "show", "c-pending", "--json").stdout)
    assert running["state"] == "running" and running["record"]["state"] == "running"
    assert (running["claim"]["agent"], running["claim"]["pid"], running["claim"]["epoch"]) == ("tester", os.getpid(), 1)
    text = invoke(root, "show", "c-pending")
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[0].split() == ["c-pending", "running", "priority", "2", "attempts", "0/3"]
    assert f"claimed by tester (pid {os.getpid()}), epoch 1" in text.stdout


def test_show_prints_user_text_verbatim_never_as_markup(make_fleet) -> None:
    root = make_fleet(QUICK_FLEET, {"a[red]b.toml": 'id = "odd"\nprompt = "[bold]x[/bold]"\n'})
    error = "acceptance '[/bold]x' cannot start '[/bold]x': No such file or directory"
    settle(root, "odd", "failed", error=error)
    result = invoke(root, "show", "odd")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "source: tasks/a[red]b.toml" in lines
    assert " ".join(result.stdout.split()).count(error) == 2  # as the reason and in the attempt's history
    assert lines[-1] == "[bold]x[/bold]"


def test_show_unknown_id_is_exit_2(make_fleet, monkeypatch, capsys) -> None:
    root = make_fleet(QUICK_FLEET, {"a.toml": 'prompt = "a"\n'})
    code, out, err = run_main(monkeypatch, capsys, "-C", str(root), "show", "nope")
    assert code == 2 and out == ""
    assert_one_line_error(err, "no task 'nope'", "coordinator tasks")


# -- retry and cancel --------------------------------------------------------------------------------------------


def test_retry_requeues_failed_done_and_cancelled_with_fresh_attempts(make_fleet) -> None:
    root = five_state_fleet(make_fleet)
    for task_id, previous in (("b-failed", "failed"), ("a-done", "done"), ("e-cancelled", "cancelled")):
        result = invoke(root, "retry", task_id)
        assert result.exit_code == 0, result.output
        assert result.stdout == f"{task_id}: pending\n"
        rec = record(root, task_id)
        assert (rec["state"], rec["attempts"], rec["last_error"]) == ("pending", 0, None)
        assert {"event": "retried", "task": task_id, "previous": previous}.items() <= events(root)[-1].items()
    rows = {r["id"]: r["state"] for r in json.loads(invoke(root, "tasks", "--json").stdout)}
    assert rows == dict.fromkeys(["a-done", "b-failed", "c-pending", "d-blocked", "e-cancelled"], "pending")


@pytest.mark.parametrize(("task_id", "needle"), [("c-pending", "'c-pending' is pending; only failed, done or "
                                                               "cancelled"),
                                                 ("d-blocked", "'d-blocked' is blocked (dependency 'b-failed'"),
                                                 ("nope", "no task 'nope'")])
def test_retry_refuses_other_states_and_unknown_ids(make_fleet, monkeypatch, capsys, task_id: str,
                                                    needle: str) -> None:
    root = five_state_fleet(make_fleet)
    code, _, err = run_main(monkeypatch, capsys, "-C", str(root), "retry", task_id)
    assert code == 2
    assert_one_line_error(err, needle)


def test_retry_refuses_a_running_task(make_fleet, monkeypatch, capsys) -> None:
    root = five_state_fleet(make_fleet)
    hold(root, "c-pending")
    code, _, err = run_main(monkeypatch, capsys, "-C", str(root), "retry", "c-pending")
    assert code == 2
    assert_one_line_error(err, "'c-pending' is running")
    assert record(root, "c-pending")["state"] == "running"


def test_cancel_pending_and_refuse_finished(make_fleet, monkeypatch, capsys) -> None:
    root = five_state_fleet(make_fleet)
    result = invoke(root, "cancel", "c-pending")
    assert result.exit_code == 0 and result.stdout == "c-pending: cancelled\n"
    assert record(root, "c-pending")["state"] == "cancelled"
    assert {"event": "cancelled", "task": "c-pending", "agent": None}.items() <= events(root)[-1].items()
    for task_id, state in (("a-done", "done"), ("b-failed", "failed"), ("c-pending", "cancelled")):
        code, _, err = run_main(monkeypatch, capsys, "-C", str(root), "cancel", task_id)
        assert code == 2
        assert_one_line_error(err, f"task {task_id!r} is already {state}")
        assert record(root, task_id)["state"] == state
    code, _, err = run_main(monkeypatch, capsys, "-C", str(root), "cancel", "nope")
    assert code == 2
    assert_one_line_error(err, "no task 'nope'")


# -- validate, schema, init, logs --------------------------------------------------------------------------------


def test_validate_exit_codes_text_and_json(make_fleet) -> None:
    root = make_fleet(QUICK_FLEET, {"a.toml": 'prompt = "a"\n', "b.toml": 'prompt = "b"\ndepends_on = ["zz"]\n'})
    good = invoke(root, "validate")
    assert good.exit_code == 0
    lines = good.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("blocked: b: dependency 'zz' is not a known task")
    assert lines[1] == "2 valid task(s), 0 invalid"
    (root / "tasks" / "bad.toml").write_text('prompt = "x"\npriority = -1\n')
    bad = invoke(root, "validate")
    assert bad.exit_code == 2
    assert bad.stdout.splitlines()[0].startswith("invalid: tasks/bad.toml:2: priority: must be 0 or more")
    assert bad.stdout.splitlines()[-1] == "2 valid task(s), 1 invalid"
    data = json.loads(invoke(root, "validate", "--json").stdout)
    assert data["valid"] == 2
    (bad_entry,) = data["invalid"]
    assert {k: bad_entry[k] for k in ("path", "line", "field")} == {"path": "tasks/bad.toml", "line": 2,
                                                                     "field": "priority"}
    assert bad_entry["error"].startswith("tasks/bad.toml:2: priority: must be 0 or more")
    assert [b["id"] for b in data["blocked"]] == ["b"]
    assert data["blocked"][0]["reason"].startswith("dependency 'zz' is not a known task")
    only_a = invoke(root, "validate", str(root / "tasks" / "a.toml"))
    assert only_a.exit_code == 0 and only_a.stdout.splitlines()[-1] == "1 valid task(s), 0 invalid"
    only_bad = invoke(root, "validate", "--json", str(root / "tasks" / "bad.toml"))
    assert only_bad.exit_code == 2 and json.loads(only_bad.stdout)["valid"] == 0


def test_schema_is_a_json_schema_of_task_files() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    task = schema["$defs"]["Task"]
    assert {"prompt", "priority", "depends_on", "acceptance", "max_attempts", "vars"} <= set(task["properties"])
    assert "prompt" in task["required"] and task.get("additionalProperties") is False
    assert len(schema["oneOf"]) == 2  # one task, or a [[tasks]] array


def test_init_writes_a_fleet_and_refuses_to_overwrite(tmp_path: Path, monkeypatch, capsys) -> None:
    target = tmp_path / "myfleet"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    written = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    assert written == {"fleet.toml", "context/notes.md", "tasks/hello.toml", "tasks/outline.toml",
                       "tasks/summary.toml", ".gitignore"}
    assert ".coordinator/" in (target / ".gitignore").read_text().splitlines()
    assert result.stdout.splitlines()[-1] == f"next: coordinator -C {target} run"
    check = invoke(target, "validate", "--json")
    assert check.exit_code == 0 and json.loads(check.stdout)["valid"] == 3
    assert load_config(target).agents["llm"].shared_context == ["context/*.md"]

    (target / "fleet.toml").write_text("# mine\n")
    code, _, err = run_main(monkeypatch, capsys, "init", str(target))
    assert code == 2
    assert_one_line_error(err, "fleet.toml: already exists; pass --force")
    code, _, err = run_main(monkeypatch, capsys, "init", "--force", str(target))
    assert code == 2, "--force replaces fleet.toml only, never the user's tasks"
    assert_one_line_error(err, "would overwrite", "hello.toml")
    assert (target / "fleet.toml").read_text() == "# mine\n"

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    code, _, err = run_main(monkeypatch, capsys, "init", str(a_file))
    assert code == 2
    assert_one_line_error(err, f"{a_file}: is not a folder")

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "fleet.toml").write_text("# old\n")
    forced = runner.invoke(app, ["init", "--force", str(fresh)])
    assert forced.exit_code == 0, forced.output
    assert "[agents.llm]" in (fresh / "fleet.toml").read_text()


def write_run_logs(root: Path, task_id: str, logs: dict[int, str]) -> None:
    for attempt, text in logs.items():
        folder = root / ".coordinator" / "runs" / task_id / str(attempt)
        folder.mkdir(parents=True)
        (folder / "stdout.log").write_text(text)
        (folder / "stderr.log").write_text(f"err {attempt}\n")


def test_logs_prints_the_latest_attempt_or_the_one_asked(make_fleet, monkeypatch, capsys) -> None:
    root = make_fleet(QUICK_FLEET, {"t.toml": 'prompt = "t"\n', "quiet.toml": 'prompt = "q"\n'})
    write_run_logs(root, "t", {1: "first\n", 2: "second\n", 10: "tenth\n"})  # 10 sorts after 2
    assert invoke(root, "logs", "t").stdout == "tenth\n"
    assert invoke(root, "logs", "t", "--run", "2").stdout == "second\n"
    assert invoke(root, "logs", "t", "--stderr").stdout == "err 10\n"
    settle(root, "t", "done")
    assert invoke(root, "logs", "t", "-f").stdout == "tenth\n", "-f on a finished task prints and returns"
    code, _, err = run_main(monkeypatch, capsys, "-C", str(root), "logs", "quiet")
    assert code == 2
    assert_one_line_error(err, "'quiet' has no stdout log yet", "logs -f quiet")
    for args in (("logs", "typo"), ("logs", "-f", "typo")):  # -f must not wait forever for a task that is not there
        code, _, err = run_main(monkeypatch, capsys, "-C", str(root), *args)
        assert code == 2
        assert_one_line_error(err, "no task 'typo'")


# -- a bad fleet.toml --------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    ('[fleet]\nagents = "many"\n', "fleet.toml:2: fleet.agents: must be a whole number (got 'many')"),
    ("[fleet]\nbogus = 1\n", "fleet.toml:2: fleet.bogus: unknown key"),
    ("[fleet\n", "fleet.toml:1: TOML syntax error"),
    ('[gateway]\nhost = "0.0.0.0"\n', "fleet.toml:2: gateway.host: the gateway listens on loopback only"),
    ('[fleet]\ndefault_agent = "ghost"\n', "fleet.toml: fleet.default_agent: agent 'ghost' is not defined"),
    ('[agents.c]\nkind = "command"\n', "fleet.toml: agents.c.command: a command agent needs command"),
    ("[fleet]\nlease_s = -1\n", "fleet.toml:2: fleet.lease_s: Input should be greater than 0"),
    (b'[agents.llm]\nsystem = "caf\xe9"\n', "fleet.toml: file is not UTF-8"),
    (None, "fleet.toml: is not a file"),
]


@pytest.mark.parametrize(("content", "needle"), BAD_CONFIGS, ids=[n.split(": ", 1)[-1][:30] for _, n in BAD_CONFIGS])
@pytest.mark.parametrize("command", [("tasks",), ("status", "--json"), ("validate",), ("add", "x")])
def test_bad_fleet_toml_is_one_line_exit_2(make_fleet, monkeypatch, capsys, content, needle: str,
                                           command: tuple[str, ...]) -> None:
    root = make_fleet(tasks={"a.toml": 'prompt = "a"\n'})
    if content is None:
        (root / "fleet.toml").unlink()
        (root / "fleet.toml").mkdir()
    else:
        (root / "fleet.toml").write_bytes(content.encode() if isinstance(content, str) else content)
    code, out, err = run_main(monkeypatch, capsys, "-C", str(root), *command)
    assert code == 2 and out == ""
    assert_one_line_error(err, str(root / needle))
    assert sorted(p.name for p in (root / "tasks").iterdir()) == ["a.toml"]


def test_missing_root_is_one_line_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_main(monkeypatch, capsys, "-C", str(tmp_path / "nowhere"), "status")
    assert code == 2
    assert_one_line_error(err, "is not a folder", "-C DIR")


# -- real subprocesses: one per command --------------------------------------------------------------------------


def test_subprocess_help_lists_every_command(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert f" {name} " in result.stdout, name


def test_subprocess_init_add_validate_schema(tmp_path: Path) -> None:
    target = tmp_path / "made"
    init = subprocess.run(coordinator_argv("init", str(target)), capture_output=True, text=True, timeout=60,
                          env=subprocess_env())
    assert init.returncode == 0, init.stderr
    assert (target / "tasks" / "summary.toml").exists() and (target / "context" / "notes.md").exists()
    again = subprocess.run(coordinator_argv("init", str(target)), capture_output=True, text=True, timeout=60,
                           env=subprocess_env())
    assert again.returncode == 2 and again.stdout == ""
    assert_one_line_error(again.stderr, "pass --force")

    add = run_cli(target, "add", "Write the changelog", "--priority", "critical", "--depends-on", "hello")
    assert add.returncode == 0, add.stderr
    assert add.stdout == "added write-the-changelog (tasks/write-the-changelog.toml)\n"
    clash = run_cli(target, "add", "again", "--id", "hello")
    assert clash.returncode == 2 and "Traceback" not in clash.stderr
    assert_one_line_error(clash.stderr, "'hello' already exists")

    valid = run_cli(target, "validate")
    assert valid.returncode == 0 and valid.stdout == "4 valid task(s), 0 invalid\n"
    (target / "tasks" / "oops.toml").write_text("prompt = 3\n")
    invalid = run_cli(target, "validate", "--json")
    assert invalid.returncode == 2
    assert [i["path"] for i in json.loads(invalid.stdout)["invalid"]] == ["tasks/oops.toml"]

    schema = run_cli(target, "schema")
    assert schema.returncode == 0 and "Task" in json.loads(schema.stdout)["$defs"]


def test_subprocess_bad_fleet_toml_has_no_traceback(make_fleet) -> None:
    root = make_fleet("[fleet]\nheartbeat_s = \"often\"\n")
    for args in (("status",), ("run", "--until-empty"), ("agent", "--until-empty"), ("tasks", "--json")):
        result = run_cli(root, *args)
        assert result.returncode == 2 and result.stdout == "", args
        assert_one_line_error(result.stderr, f"{root / 'fleet.toml'}:2: fleet.heartbeat_s:")


def test_subprocess_agent_tasks_show_logs_retry_cancel_status(make_fleet) -> None:
    root = make_fleet()
    ledger = write_ledger_fleet(root, heartbeat_s=0.2)
    ids = write_tasks(root, 3)
    (root / "tasks" / "later.toml").write_text('prompt = "later"\ndepends_on = ["t0000"]\n')

    cancelled = run_cli(root, "cancel", "later")
    assert cancelled.returncode == 0 and cancelled.stdout == "later: cancelled\n"
    agent = run_cli(root, "agent", "--id", "solo", "--until-empty")
    assert agent.returncode == 0, agent.stderr
    assert all(record(root, t)["state"] == "done" for t in ids)
    assert record(root, "later")["state"] == "cancelled"
    assert sorted(line.split()[1] for line in ledger.read_text().splitlines() if line.startswith("end")) == ids

    rows = run_cli(root, "tasks", "--json")
    assert rows.returncode == 0
    assert {r["id"]: r["state"] for r in json.loads(rows.stdout)} == {**dict.fromkeys(ids, "done"),
                                                                       "later": "cancelled"}
    text = run_cli(root, "tasks", "--state", "done")
    assert [line.split()[0] for line in text.stdout.splitlines()[1:]] == ["t0000", "t0001", "t0002"]

    show = run_cli(root, "show", "t0001", "--json")
    assert show.returncode == 0
    data = json.loads(show.stdout)
    assert data["state"] == "done" and data["record"]["agent"] == "solo" and data["claim"] is None

    logs = run_cli(root, "logs", "t0001")
    assert logs.returncode == 0 and logs.stdout == ""  # the ledger script writes to its ledger only
    (root / "ledger.sh").write_text("#!/bin/sh\necho \"out of $1 attempt $COORDINATOR_ATTEMPT\"\n")
    retried = run_cli(root, "retry", "t0001")
    assert retried.returncode == 0 and retried.stdout == "t0001: pending\n"
    assert record(root, "t0001")["attempts"] == 0
    refused = run_cli(root, "cancel", "t0000")
    assert refused.returncode == 2
    assert_one_line_error(refused.stderr, "'t0000' is already done")
    assert run_cli(root, "agent", "--until-empty").returncode == 0
    assert run_cli(root, "logs", "t0001").stdout == "out of t0001 attempt 1\n"

    status = run_cli(root, "status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split() == ["tasks", "pending", "0", "blocked", "0", "running", "0", "done", "3", "failed", "0",
                                "invalid", "0", "cancelled", "1"]
    assert lines[-1] == "healthy"
    report = json.loads(run_cli(root, "status", "--json").stdout)
    assert set(report) >= {"tasks", "agents", "gateway", "stale_claims", "invalid_files", "healthy"}
    assert report["tasks"]["done"] == 3 and report["healthy"] and report["stale_claims"] == []
    agents = {a["id"]: a for a in report["agents"]}
    assert agents["solo"]["done"] == 3 and agents["solo"]["state"] == "stopped" and not agents["solo"]["alive"]
    assert run_cli(root, "status", "--check").returncode == 0
    (root / "tasks" / "broken.toml").write_text("nope\n")
    unhealthy = run_cli(root, "status", "--check")
    assert unhealthy.returncode == 1
    assert "invalid: tasks/broken.toml:1: TOML syntax error" in unhealthy.stdout
    assert unhealthy.stdout.splitlines()[-1] == "unhealthy: 1 invalid task file(s)"


FOLLOW_SCRIPT = r"""#!/bin/sh
# Prints three lines, waits (bounded) for the test to create ./release, then prints three more.
for i in 1 2 3; do echo "line $i"; sleep 0.02; done
n=0
while [ ! -e release ] && [ $n -lt 1500 ]; do sleep 0.02; n=$((n+1)); done
for i in 4 5 6; do echo "line $i"; sleep 0.02; done
"""


def test_subprocess_logs_follow_streams_a_running_task_and_exits_when_done(make_fleet) -> None:
    root = make_fleet(f"""
        [fleet]
        default_agent = "talk"
        heartbeat_s = 0.2
        [agents.talk]
        kind = "command"
        command = ["sh", "{{workdir}}/talk.sh"]
    """, {"chatty.toml": 'prompt = "talk"\n'})
    (root / "talk.sh").write_text(FOLLOW_SCRIPT)
    follow = subprocess.Popen(coordinator_argv("-C", str(root), "logs", "-f", "chatty"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=subprocess_env(), start_new_session=True)
    agent = start_agent(root, "talker", "--until-empty")
    try:
        seen = [follow.stdout.readline() for _ in range(3)]  # blocks until each line is streamed
        assert seen == ["line 1\n", "line 2\n", "line 3\n"]
        assert record(root, "chatty")["state"] == "running", "the first lines arrived while the task ran"
        assert follow.poll() is None
        (root / "release").touch()
        rest, err = follow.communicate(timeout=60)
        assert follow.returncode == 0, err
        assert rest == "line 4\nline 5\nline 6\n"
        assert agent.wait(timeout=60) == 0
        assert record(root, "chatty")["state"] == "done"
    finally:
        stop(follow)
        stop(agent)


def test_subprocess_cancel_of_a_running_task_kills_its_runner_at_once(make_fleet) -> None:
    # heartbeat_s is long: without cancel's SIGUSR1 the agent would not notice for 30 s.
    root = make_fleet(f"""
        [fleet]
        default_agent = "quick"
        heartbeat_s = 30
        lease_s = 120
        [agents.quick]
        kind = "command"
        command = ["true"]
        [agents.slow]
        kind = "command"
        command = ["{sys.executable}", "-c", "import signal; signal.pause()"]
    """, {"long.toml": 'prompt = "sleep"\nagent = "slow"\npriority = 0\n',
          "after.toml": 'prompt = "next"\npriority = 1\n'})
    agent = start_agent(root, "worker", "--until-empty")
    claim_path = root / ".coordinator" / "claims" / "long.json"
    try:
        def runner_in_claim() -> dict | None:
            try:
                claim = json.loads(claim_path.read_text())
            except (FileNotFoundError, ValueError):
                return None
            return claim if claim.get("child_pid") else None

        claim = wait_for(runner_in_claim, timeout=30, what="the runner's pid in the claim")
        result = run_cli(root, "cancel", "long")
        assert result.returncode == 0 and result.stdout == "long: cancelled\n", result.stderr
        wait_for(lambda: not process_is_alive(claim["child_pid"], claim["child_started_at"]), timeout=10,
                 what="the cancelled runner to be killed (SIGUSR1, not the 30 s heartbeat)")
        assert agent.wait(timeout=30) == 0, (root / "worker.stderr").read_text()
    finally:
        stop(agent)
    assert record(root, "long")["state"] == "cancelled"
    assert record(root, "after")["state"] == "done", "the agent went on with other work"
    kinds = [(e["event"], e.get("task")) for e in events(root)]
    assert kinds.index(("cancelled", "long")) < kinds.index(("claimed", "after"))
    assert any(e["event"] == "fenced" and e["task"] == "long" for e in events(root))
    assert "discarded" in (root / "worker.stderr").read_text()
    assert not claim_path.exists()


def test_subprocess_gateway_serves_until_sigterm(make_fleet) -> None:
    root = make_fleet("[backends.default]\nkind = \"echo\"\n")
    info_path = root / ".coordinator" / "gateway.json"
    log = open(root / "gateway.log", "wb")  # noqa: SIM115  (closed below)
    gateway = subprocess.Popen(coordinator_argv("-C", str(root), "gateway"), stdout=log, stderr=subprocess.STDOUT,
                               env=subprocess_env(), start_new_session=True)
    try:
        def published() -> dict | None:
            try:
                return json.loads(info_path.read_text())
            except (FileNotFoundError, ValueError):
                return None

        info = wait_for(published, timeout=30, what="gateway.json")
        assert stat.S_IMODE(info_path.stat().st_mode) == 0o600
        assert info["pid"] == gateway.pid and info["url"].startswith("http://127.0.0.1:") and info["token"]
        probe = urllib.request.Request(info["url"] + "/healthz", headers={"x-api-key": info["token"]})
        with urllib.request.urlopen(probe, timeout=10) as response:
            assert response.status == 200 and json.loads(response.read())["ok"] is True
        live = json.loads(run_cli(root, "status", "--json").stdout)["gateway"]
        assert live["running"] and live["url"] == info["url"]
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0, (root / "gateway.log").read_text()
    finally:
        stop(gateway)
        log.close()
    assert not info_path.exists()
    after = json.loads(run_cli(root, "status", "--json").stdout)
    assert after["gateway"]["running"] is False and after["healthy"]


def test_subprocess_retry_starts_a_fresh_run_folder(make_fleet) -> None:
    root = make_fleet("""
        [fleet]
        default_agent = "count"
        [agents.count]
        kind = "command"
        command = ["sh", "-c", "n=$(cat n 2>/dev/null || echo 0); n=$((n+1)); echo $n > n; echo run $n"]
    """, {"a.toml": 'prompt = "x"\n'})
    assert run_cli(root, "agent", "--until-empty").returncode == 0
    assert run_cli(root, "retry", "a").returncode == 0
    assert run_cli(root, "agent", "--until-empty").returncode == 0
    assert run_cli(root, "logs", "a").stdout == "run 2\n"
    latest = run_dirs(load_config(root), "a")[-1]
    assert (latest / "output.md").read_text() == "run 2\n"


@pytest.mark.parametrize("args, expected", [
    (("tasks", "--state", "bogus"), "coordinator tasks --help"),
    (("show",), "Missing argument"),
    (("no-such-command",), "coordinator --help"),
])
def test_subprocess_usage_errors_are_one_line(make_fleet, args: tuple[str, ...], expected: str) -> None:
    root = make_fleet()
    result = run_cli(root, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr


def test_subprocess_add_into_a_tasks_path_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    root.mkdir()
    (root / "fleet.toml").write_text("")
    (root / "tasks").write_text("not a folder")
    result = run_cli(root, "add", "hello")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "not the tasks folder" in result.stderr
    assert (root / "tasks").read_text() == "not a folder", "nothing the user wrote is touched"
