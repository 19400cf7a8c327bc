"""The MCP server's tools through the SDK's in-memory client, with no fleet running (files are the truth).

Every tool answers structured content; every user error is a tool error with the
one line the CLI prints for the same thing (compared with the real CLI's output).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from coordinator.clock import ManualClock
from coordinator.serve.mcp_server import TOOLS
from tests.api_support import write_echo_fleet
from tests.mcp_support import call, data, error, fleet_tools, with_client
from tests.procs import run_cli
from tests.test_api import BAD_FIELDS


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_echo_fleet(tmp_path / "fleet")


def cli_error(root: Path, *args: str, code: int = 2) -> str:
    """The one line the CLI prints for an error (without its "error: " prefix)."""
    result = run_cli(root, *args)
    assert result.returncode == code, result.stdout + result.stderr
    line, = result.stderr.strip().splitlines()
    return line.removeprefix("error: ")


def test_every_tool_is_listed_with_its_input_and_output_schema(root: Path) -> None:
    listed = with_client(fleet_tools(root), lambda client: client.list_tools())
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == {name for name, _, _ in TOOLS}
    for tool in tools.values():
        assert tool.description and tool.input_schema["type"] == "object"
        assert tool.output_schema is not None and tool.output_schema["type"] == "object", tool.name
    items = tools["enqueue"].input_schema["properties"]["tasks"]["items"]
    assert items["required"] == ["prompt"] and {"id", "priority", "depends_on", "acceptance"} <= set(items["properties"])
    assert tools["get_task"].annotations.read_only_hint and not tools["enqueue"].annotations.read_only_hint


def test_enqueue_writes_task_files_and_answers_ids_states_and_queue_positions(root: Path) -> None:
    tasks = [{"id": "first", "prompt": "do the first thing", "priority": "high"},
             {"prompt": "Then the second thing", "depends_on": ["first"]}]
    first, again = call(fleet_tools(root), ("enqueue", {"tasks": tasks}), ("enqueue", {"tasks": tasks[:1]}))
    assert data(first) == {"tasks": [
        {"task_id": "first", "state": "pending", "queue_position": 1, "created": True},
        {"task_id": "then-the-second-thing", "state": "pending", "queue_position": 2, "created": True}]}
    assert data(again)["tasks"] == [{"task_id": "first", "state": "pending", "queue_position": 1, "created": False}]
    assert sorted(p.name for p in (root / "tasks").iterdir()) == ["first.toml", "then-the-second-thing.toml"]
    listed = json.loads(run_cli(root, "tasks", "--json").stdout)  # the CLI reads what enqueue wrote
    assert [(row["id"], row["priority"]) for row in listed] == [("first", 1), ("then-the-second-thing", 2)]


def test_enqueue_refuses_each_bad_field_with_validates_message_and_writes_nothing(root: Path, tmp_path: Path) -> None:
    shadow = write_echo_fleet(tmp_path / "shadow")  # validate judges the same files enqueue would write
    for n, (key, value) in enumerate(BAD_FIELDS.items()):
        (shadow / "tasks" / f"bad{n}.toml").write_text(tomli_w.dumps({"prompt": f"bad {key}", key: value}))
    expected = {bad["id"]: bad["error"] for bad in json.loads(run_cli(shadow, "validate", "--json").stdout)["invalid"]}
    steps = [("enqueue", {"tasks": [{"id": f"bad{n}", "prompt": f"bad {key}", key: value}]})
             for n, (key, value) in enumerate(BAD_FIELDS.items())]
    for n, result in enumerate(call(fleet_tools(root), *steps)):
        assert error(result) == expected[f"bad{n}"].replace(str(shadow), str(root))
    assert list((root / "tasks").iterdir()) == []


def test_enqueue_refuses_a_taken_id_a_full_queue_and_a_task_inside_the_fleet(root: Path) -> None:
    (root / "fleet.toml").write_text((root / "fleet.toml").read_text().replace("[fleet]", "[fleet]\nmax_pending = 1"))
    taken, full = call(fleet_tools(root), ("enqueue", {"tasks": [{"id": "a", "prompt": "a"}]}),
                       ("enqueue", {"tasks": [{"id": "a", "prompt": "something else"}]}),
                       ("enqueue", {"tasks": [{"id": "b", "prompt": "b"}]}))[1:]
    assert error(taken) == "task 'a' already exists in tasks/a.toml; pick another id"
    assert error(full) == ("1 tasks are waiting and [fleet] max_pending is 1; retry later, or raise max_pending in "
                           "fleet.toml")
    empty, = call(fleet_tools(root), ("enqueue", {"tasks": []}))
    assert empty.is_error and "tasks" in empty.content[0].text  # the input schema's minItems
    inside, = call(fleet_tools(root, inside_task="a"), ("enqueue", {"tasks": [{"id": "c", "prompt": "c"}]}))
    assert error(inside).startswith("agents cannot enqueue into their own fleet: this MCP server runs inside fleet "
                                    "task 'a' (COORDINATOR_TASK_ID is set)")
    assert sorted(p.name for p in (root / "tasks").iterdir()) == ["a.toml"]


def test_list_tasks_pages_and_filters_like_the_http_api(root: Path) -> None:
    tools = fleet_tools(root)
    call(tools, ("enqueue", {"tasks": [{"id": f"t{n}", "prompt": f"task {n}"} for n in range(5)]}),
         ("cancel_task", {"task_id": "t3"}))
    seen, cursor = [], None
    while True:
        page, = call(tools, ("list_tasks", {"limit": 2, **({"cursor": cursor} if cursor else {})}))
        seen += [row["id"] for row in data(page)["tasks"]]
        cursor = data(page)["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"t{n}" for n in range(5)]
    cancelled, bad_cursor, bad_state, bad_limit = call(
        tools, ("list_tasks", {"state": "cancelled"}), ("list_tasks", {"cursor": "-1"}),
        ("list_tasks", {"state": "sleeping"}), ("list_tasks", {"limit": 0}))
    assert [row["id"] for row in data(cancelled)["tasks"]] == ["t3"]
    assert data(cancelled)["tasks"][0] == json.loads(run_cli(root, "tasks", "--state", "cancelled", "--json").stdout)[0]
    assert error(bad_cursor) == "cursor: '-1' is not a next_cursor value; pass the one the previous page returned"
    assert bad_state.is_error and "sleeping" in bad_state.content[0].text  # the input schema's enum
    assert bad_limit.is_error and "limit" in bad_limit.content[0].text


def test_get_task_and_fleet_status_are_the_clis_json(root: Path) -> None:
    (root / "tasks" / "broken.toml").write_text('prompt = "x"\npriority = "urgent"\n')
    shown, status, missing = call(fleet_tools(root), ("enqueue", {"tasks": [{"id": "s", "prompt": "show me"}]}),
                                  ("get_task", {"task_id": "s"}), ("fleet_status", {}),
                                  ("get_task", {"task_id": "nope"}))[1:]
    assert data(shown) == json.loads(run_cli(root, "show", "s", "--json").stdout)
    cli_status = json.loads(run_cli(root, "status", "--json").stdout)
    assert {key: data(status)[key] for key in ("tasks", "invalid_files", "healthy", "problems", "paused")} == \
        {key: cli_status[key] for key in ("tasks", "invalid_files", "healthy", "problems", "paused")}
    assert data(status)["tasks"]["pending"] == 1 and data(status)["tasks"]["invalid"] == 1
    assert error(missing) == cli_error(root, "show", "nope")


def test_cancel_and_retry_follow_the_state_table_with_the_clis_messages(root: Path) -> None:
    tools = fleet_tools(root)
    early_retry, = call(tools, ("enqueue", {"tasks": [{"id": "c", "prompt": "c"}]}), ("retry_task", {"task_id": "c"}))[1:]
    assert error(early_retry) == cli_error(root, "retry", "c")  # pending: nothing to retry
    cancelled, again, missing = call(tools, ("cancel_task", {"task_id": "c"}), ("cancel_task", {"task_id": "c"}),
                                     ("cancel_task", {"task_id": "nope"}))
    assert data(cancelled) == {"task_id": "c", "state": "cancelled"}
    assert error(again) == cli_error(root, "cancel", "c")  # already cancelled
    assert error(missing) == cli_error(root, "cancel", "nope")
    retried, = call(tools, ("retry_task", {"task_id": "c"}))
    assert data(retried) == {"task_id": "c", "state": "pending"}


def test_wait_task_returns_state_and_whether_it_finished(root: Path) -> None:
    clock = ManualClock()  # poll() waits in virtual time: a 25 s wait costs nothing
    (root / "tasks" / "late.toml").write_text('prompt = "waits on nobody"\ndepends_on = ["ghost"]\n')
    tools = fleet_tools(root, clock=clock)
    pending, blocked, missing = call(tools, ("enqueue", {"tasks": [{"id": "w", "prompt": "w"}]}),
                                     ("wait_task", {"task_id": "w", "timeout_s": 600}),
                                     ("wait_task", {"task_id": "late"}), ("wait_task", {"task_id": "nope"}))[1:]
    assert data(pending) == {"task_id": "w", "state": "pending", "finished": False, "reason": None, "attempts": 0,
                             "max_attempts": 3}
    assert sum(clock.slept) == pytest.approx(25), "a call waits at most 25 s, and a blocked task not at all"
    assert data(blocked)["state"] == "blocked" and not data(blocked)["finished"]
    assert "ghost" in data(blocked)["reason"]
    assert error(missing) == cli_error(root, "show", "nope")
    cancelled, = call(tools, ("cancel_task", {"task_id": "w"}))
    before = len(clock.slept)
    done, = call(tools, ("wait_task", {"task_id": "w"}))
    assert data(done)["state"] == "cancelled" and data(done)["finished"] and len(clock.slept) == before


def test_read_output_reads_a_finished_run_in_bounded_slices(root: Path) -> None:
    tools = fleet_tools(root)
    call(tools, ("enqueue", {"tasks": [{"id": "out", "prompt": "Write a few words about queues"}]}))
    assert run_cli(root, "run", "-n", "1", "--until-empty", "--no-dashboard").returncode == 0
    log = (root / ".coordinator" / "runs" / "out" / "1" / "stdout.log").read_text()
    assert log

    async def read_in_slices(client: Any) -> list[dict[str, Any]]:
        chunks, offset, eof = [], 0, False
        while not eof:
            chunks.append(data(await client.call_tool("read_output", {"task_id": "out", "offset": offset,
                                                                      "max_bytes": 7})))
            offset, eof = chunks[-1]["next_offset"], chunks[-1]["eof"]
        return chunks
    chunks = with_client(tools, read_in_slices)
    assert all(chunk["run"] == 1 and len(chunk["text"].encode()) <= 7 for chunk in chunks)
    text, offset = "".join(chunk["text"] for chunk in chunks), chunks[-1]["next_offset"]
    assert text == log and offset == len(log.encode()) and len(chunks) >= len(log.encode()) // 7
    past, no_run, missing, stderr = call(
        tools, ("read_output", {"task_id": "out", "offset": offset + 1}), ("read_output", {"task_id": "out", "run": 9}),
        ("read_output", {"task_id": "nope"}), ("read_output", {"task_id": "out", "stream": "stderr"}))
    assert error(past) == f"offset {offset + 1} is past the end of the log ({offset} bytes); start from 0 or a next_offset"
    assert error(no_run) == "task 'out' has no run 9 (runs: 1); pick one or leave run out"
    assert error(missing) == cli_error(root, "logs", "nope")
    assert data(stderr)["eof"] and data(stderr)["text"] == ""


def test_read_output_before_any_run_is_empty_and_not_at_its_end(root: Path) -> None:
    pending, = call(fleet_tools(root), ("enqueue", {"tasks": [{"id": "p", "prompt": "p"}]}),
                    ("read_output", {"task_id": "p"}))[1:]
    assert data(pending) == {"task_id": "p", "run": None, "stream": "stdout", "text": "", "next_offset": 0,
                             "eof": False}


def test_infer_without_a_running_gateway_says_how_to_start_one(root: Path) -> None:
    result, = call(fleet_tools(root), ("infer", {"prompt": "hello"}))
    assert error(result) == cli_error(root, "ui", code=1)  # what `coordinator ui` says without a gateway
    assert error(result).startswith("no gateway is running for ")


def test_a_broken_fleet_toml_is_each_calls_one_line_config_error(root: Path) -> None:
    tools = fleet_tools(root)
    (root / "fleet.toml").write_text("[fleet]\nagents = 0\n")
    expected = cli_error(root, "status")
    for result in call(tools, ("fleet_status", {}), ("enqueue", {"tasks": [{"prompt": "x"}]})):
        assert error(result) == expected
