"""Task files → TaskSet: both formats, defaults, ordering, dependencies, and the incremental index."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.config import FleetConfig, load_config
from coordinator.tasks import PRIORITY_NAMES, Task, TaskIndex, load_paths, load_tasks
from coordinator.tasks.schema import task_json_schema

MakeFleet = Callable[..., Path]


def age(path: Path, seconds_ago: float = 3600) -> None:
    """Give a file an old mtime, outside the index's racy window (and to order "first seen")."""
    stamp = time.time() - seconds_ago
    os.utime(path, (stamp, stamp))


def age_all(root: Path) -> None:
    for path in (root / "tasks").rglob("*.toml"):
        age(path)


def load(root: Path):
    return load_tasks(load_config(root))


def test_single_task_defaults(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={"write-docs.toml": 'prompt = """\n\n  Write the docs.\nThen stop."""\n'})
    task = load(root).tasks["write-docs"]
    assert task.title == "Write the docs."
    assert (task.priority, task.max_attempts, task.depends_on, task.agent, task.model) == (2, 3, [], None, None)
    assert (task.context, task.workdir, task.timeout_s, task.acceptance, task.labels, task.vars) == (
        [], None, None, None, [], {})
    assert (task.source, task.index) == ("tasks/write-docs.toml", 0)
    assert task.seen_ns == (root / "tasks" / "write-docs.toml").stat().st_mtime_ns


def test_every_key(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={"full.toml": """
        id = "full-1"
        prompt = "Do it"
        title = "Custom"
        priority = 7
        depends_on = []
        agent = "llm"
        model = "fast"
        context = ["tasks/*.toml"]
        workdir = "tasks"
        timeout_s = 5
        max_attempts = 1
        acceptance = ["true"]
        max_tokens_budget = 1000
        max_usd = 0.5
        labels = ["a"]
        [vars]
        n = 1
    """})
    task = load(root).tasks["full-1"]
    assert task.title == "Custom" and task.priority == 7 and task.timeout_s == 5.0
    assert task.acceptance == ["true"] and task.max_usd == 0.5 and task.vars == {"n": 1}


def test_array_format(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={"batch.toml": """
        [[tasks]]
        id = "one"
        prompt = "First"

        [[tasks]]
        id = "two"
        prompt = "Second"
        [tasks.vars]
        x = "y"
    """})
    taskset = load(root)
    assert list(taskset.tasks) == ["one", "two"]
    assert taskset.tasks["two"].index == 1 and taskset.tasks["two"].vars == {"x": "y"}
    assert taskset.tasks["one"].source == "tasks/batch.toml"


def test_title_is_capped(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={"long.toml": f'prompt = "{"word " * 40}"\n'})
    title = load(root).tasks["long"].title
    assert len(title) == 80 and title.endswith("…")


def test_priority_names(make_fleet: MakeFleet) -> None:
    tasks = {f"{name}.toml": f'prompt = "x"\npriority = "{name}"\n' for name in PRIORITY_NAMES}
    taskset = load(make_fleet(tasks=tasks))
    assert {task_id: task.priority for task_id, task in taskset.tasks.items()} == PRIORITY_NAMES


def test_order_priority_then_first_seen_then_id(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={
        "a-late.toml": 'prompt = "x"\n',
        "b-early.toml": 'prompt = "x"\n',
        "c-urgent.toml": 'prompt = "x"\npriority = "critical"\n',
        "d-low.toml": 'prompt = "x"\npriority = 5\n',
        "same.toml": '[[tasks]]\nid = "z"\nprompt = "x"\n[[tasks]]\nid = "y"\nprompt = "x"\n',
        "same-too.toml": 'prompt = "x"\n',
    })
    tasks = root / "tasks"
    age(tasks / "a-late.toml", 100)
    age(tasks / "b-early.toml", 200)
    for name in ("c-urgent.toml", "d-low.toml", "same.toml", "same-too.toml"):
        age(tasks / name, 300)
    stamp = (tasks / "same.toml").stat().st_mtime_ns
    os.utime(tasks / "same-too.toml", ns=(stamp, stamp))
    order = list(load(root).tasks)
    # Same priority and mtime: path order ("same-too.toml" < "same.toml", as '-' < '.'), then position.
    assert order == ["c-urgent", "same-too", "z", "y", "b-early", "a-late", "d-low"]
    assert order == [t.id for t in sorted(load(root).tasks.values(), key=Task.sort_key)]


def test_rendered_prompt() -> None:
    task = Task(id="t", prompt='Fix {file} ({count}x, strict={strict}); keep {unknown} and {"json": 1} and {}',
                vars={"file": "a.py", "count": 3, "strict": True})
    assert task.rendered_prompt() == 'Fix a.py (3x, strict=true); keep {unknown} and {"json": 1} and {}'
    assert Task(id="u", prompt="plain {x}").rendered_prompt() == "plain {x}"


def test_dump_is_the_file_schema() -> None:
    task = Task(id="t", prompt="p", source="tasks/t.toml", index=2, seen_ns=5)
    dumped = task.model_dump()
    assert "source" not in dumped and "seen_ns" not in dumped and "index" not in dumped
    assert Task.model_validate(dumped) == Task(id="t", prompt="p")


def test_dependencies_and_dependents(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={
        "base.toml": 'prompt = "x"\n',
        "mid.toml": 'prompt = "x"\ndepends_on = ["base"]\n',
        "top.toml": 'prompt = "x"\ndepends_on = ["base", "mid"]\n',
    })
    taskset = load(root)
    assert taskset.blocked == {}
    assert taskset.dependents == {"base": ["mid", "top"], "mid": ["top"]}


def test_unknown_and_invalid_dependencies_block_transitively(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={
        "lost.toml": 'prompt = "x"\ndepends_on = ["ghost"]\n',
        "after-lost.toml": 'prompt = "x"\ndepends_on = ["lost"]\n',
        "broken.toml": 'prompt = ""\n',
        "after-broken.toml": 'prompt = "x"\ndepends_on = ["broken"]\n',
        "fine.toml": 'prompt = "x"\n',
    })
    taskset = load(root)
    assert "ghost" in taskset.blocked["lost"] and "not a known task" in taskset.blocked["lost"]
    assert taskset.blocked["after-lost"].startswith("dependency 'lost' is blocked")
    assert "'broken' is invalid (see tasks/broken.toml)" in taskset.blocked["after-broken"]
    assert "fine" not in taskset.blocked
    assert {"lost", "after-lost", "after-broken"} <= set(taskset.tasks)  # blocked tasks stay listed
    assert [bad.path for bad in taskset.invalid] == ["tasks/broken.toml"]


def test_cycle_makes_every_member_invalid(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={
        "a.toml": 'prompt = "x"\ndepends_on = ["b"]\n',
        "b.toml": 'prompt = "x"\ndepends_on = ["c"]\n',
        "c.toml": 'prompt = "x"\ndepends_on = ["a"]\n',
        "d.toml": 'prompt = "x"\ndepends_on = ["a"]\n',
        "self.toml": 'prompt = "x"\ndepends_on = ["self"]\n',
    })
    taskset = load(root)
    errors = {bad.task_id: bad.error for bad in taskset.invalid}
    assert errors["a"] == ("tasks/a.toml:2: depends_on: dependency cycle a → b → c → a; "
                           "remove one of these dependencies")
    assert "b → c → a → b" in errors["b"] and "c → a → b → c" in errors["c"]
    assert "self → self" in errors["self"]
    assert set(taskset.tasks) == {"d"} and "'a' is invalid" in taskset.blocked["d"]


def test_long_cycle_message_stays_short(make_fleet: MakeFleet) -> None:
    count = 200
    tasks = {f"n{i}.toml": f'prompt = "x"\ndepends_on = ["n{(i + 1) % count}"]\n' for i in range(count)}
    taskset = load(make_fleet(tasks=tasks))
    assert not taskset.tasks and len(taskset.invalid) == count
    assert all(len(bad.error) < 300 and "more" in bad.error for bad in taskset.invalid)


def test_duplicate_ids_first_file_wins(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={
        "a/first.toml": 'id = "same"\nprompt = "first"\n',
        "b/second.toml": 'id = "same"\nprompt = "second"\n',
    })
    taskset = load(root)
    assert taskset.tasks["same"].prompt == "first"
    (bad,) = taskset.invalid
    assert bad.path == "tasks/b/second.toml" and bad.line == 1 and bad.task_id == "same"
    assert "tasks/a/first.toml" in bad.error and bad.error.startswith("tasks/b/second.toml:1: id: duplicate id")


def test_duplicate_of_an_invalid_task_is_still_a_duplicate(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={"a.toml": 'id = "x"\nprompt = ""\n', "b.toml": 'id = "x"\nprompt = "fine"\n'})
    taskset = load(root)
    assert "x" not in taskset.tasks
    assert any("tasks/a.toml already defines it" in bad.error for bad in taskset.invalid)


def test_unknown_agent_uses_config(make_fleet: MakeFleet) -> None:
    fleet = '[agents.llm]\n[agents.claude]\nkind = "command"\ncommand = ["claude", "-p", "{prompt}"]\n'
    root = make_fleet(fleet_toml=fleet, tasks={"a.toml": 'prompt = "x"\nagent = "claude"\n',
                                               "b.toml": 'prompt = "x"\nagent = "claud"\n'})
    taskset = load(root)
    assert "a" in taskset.tasks
    (bad,) = taskset.invalid
    assert "'claud' is not defined" in bad.error and "claude" in bad.error


def test_missing_tasks_dir_is_empty(tmp_path: Path) -> None:
    taskset = load_tasks(FleetConfig(root=tmp_path))
    assert (taskset.tasks, taskset.invalid, taskset.blocked) == ({}, [], {})


def test_hidden_and_non_toml_files_ignored(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={".draft.toml": "broken [", "notes.md": "x", ".git/x.toml": "broken [",
                             "real.toml": 'prompt = "x"\n'})
    taskset = load(root)
    assert list(taskset.tasks) == ["real"] and taskset.invalid == []


def test_folder_symlink_loop_terminates(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={"sub/a.toml": 'prompt = "x"\n'})
    (root / "tasks" / "sub" / "again").symlink_to(root / "tasks", target_is_directory=True)
    assert list(load(root).tasks) == ["a"]


# -- the incremental index ----------------------------------------------------


def test_index_reparses_only_what_changed(make_fleet: MakeFleet) -> None:
    tasks = {f"t{i}.toml": f'prompt = "task {i}"\n' for i in range(20)}
    root = make_fleet(tasks=tasks)
    age_all(root)
    index = TaskIndex(load_config(root))
    first = index.refresh()
    assert index.parsed == 20 and len(first.tasks) == 20
    assert index.refresh() is first and index.parsed == 20  # nothing changed: no parse, same object

    edited = root / "tasks" / "t3.toml"
    edited.write_text('prompt = "task 3, edited"\npriority = "critical"\n')
    age(edited, 60)
    second = index.refresh()
    assert index.parsed == 21 and list(second.tasks)[0] == "t3"
    assert second.tasks["t3"].prompt == "task 3, edited"

    (root / "tasks" / "new.toml").write_text('prompt = "new"\n')
    age(root / "tasks" / "new.toml", 30)
    (root / "tasks" / "t5.toml").unlink()
    third = index.refresh()
    assert index.parsed == 22
    assert "new" in third.tasks and "t5" not in third.tasks and len(third.tasks) == 20


def test_index_notices_same_size_same_mtime_replacement(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={"a.toml": 'prompt = "aaaa"\n'})
    path = root / "tasks" / "a.toml"
    age(path)
    index = TaskIndex(load_config(root))
    assert index.refresh().tasks["a"].prompt == "aaaa"
    stamp = path.stat().st_mtime_ns
    replacement = root / "tasks" / ".a.toml.tmp"
    replacement.write_text('prompt = "bbbb"\n')
    os.utime(replacement, ns=(stamp, stamp))
    os.replace(replacement, path)  # atomic save: new inode, same size and mtime
    assert index.refresh().tasks["a"].prompt == "bbbb"


def test_index_rereads_recently_written_files_once(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={"fresh.toml": 'prompt = "x"\n'})
    index = TaskIndex(load_config(root))
    first = index.refresh()
    # Written within the mtime granularity window: a same-tick edit could hide, so read it again...
    second = index.refresh()
    assert index.parsed == 2 and second is first  # ...but an identical result keeps the same TaskSet
    age(root / "tasks" / "fresh.toml")
    index.refresh()
    parsed = index.parsed
    index.refresh()
    assert index.parsed == parsed  # old enough now: trusted


def test_index_turns_invalid_into_valid(make_fleet: MakeFleet) -> None:
    root = make_fleet(tasks={"a.toml": 'prompt = ""\n', "b.toml": 'prompt = "x"\ndepends_on = ["a"]\n'})
    age_all(root)
    index = TaskIndex(load_config(root))
    assert "b" in index.refresh().blocked
    (root / "tasks" / "a.toml").write_text('prompt = "now fine"\n')
    age(root / "tasks" / "a.toml", 10)
    taskset = index.refresh()
    assert taskset.invalid == [] and taskset.blocked == {} and taskset.dependents == {"a": ["b"]}


# -- validate PATH... and the schema -------------------------------------------


def test_load_paths_checks_only_the_given_files(make_fleet: MakeFleet, tmp_path: Path) -> None:
    root = make_fleet(tasks={"a.toml": 'prompt = "x"\n', "dir/b.toml": 'prompt = "x"\ndepends_on = ["a"]\n',
                             "dir/c.toml": 'prompt = ""\n', "other.toml": 'prompt = ""\n'})
    outside = tmp_path / "elsewhere.toml"
    outside.write_text('id = "a"\nprompt = "dup"\n')
    config = load_config(root)
    taskset = load_paths(config, [root / "tasks" / "dir", root / "tasks" / "a.toml", outside])
    assert set(taskset.tasks) == {"a", "b"} and taskset.blocked == {}
    assert taskset.tasks["b"].source == "tasks/dir/b.toml"
    paths = [bad.path for bad in taskset.invalid]
    assert "tasks/dir/c.toml" in paths and "tasks/other.toml" not in paths
    # elsewhere.toml lies before fleet/tasks/a.toml on disk, so it keeps the id.
    assert taskset.tasks["a"].prompt == "dup"
    assert any(bad.path == "tasks/a.toml" and f"duplicate id 'a': {outside.as_posix()} already defines it"
               in bad.error for bad in taskset.invalid)
    missing = load_paths(config, [root / "nope.toml"])
    assert "cannot read it" in missing.invalid[0].error


def test_json_schema_shape() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = task_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    task = schema["$defs"]["Task"]
    assert not {"source", "index", "seen_ns"} & set(task["properties"])
    assert task["required"] == ["prompt"] and task["additionalProperties"] is False
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"prompt": "x", "priority": "high", "vars": {"a": 1}})
    assert validator.is_valid({"tasks": [{"id": "a", "prompt": "x"}]})
    assert not validator.is_valid({"tasks": [{"prompt": "x"}]})
    assert not validator.is_valid({"prompt": "x", "colour": "red"})
    assert not validator.is_valid({"prompt": "x", "priority": "urgent"})
    assert not validator.is_valid({"prompt": "x", "source": "tasks/x.toml"})
    assert not validator.is_valid({"prompt": "   "})
    assert not validator.is_valid({"prompt": "x", "acceptance": []})
    assert '"null"' not in json.dumps(schema)  # TOML has no null: optional keys are just absent


def test_symlinks_in_the_tasks_folder_that_lead_outside_the_root_are_invalid_and_never_read(make_fleet, tmp_path) -> None:
    """`tasks/rootlink -> /` once loaded every TOML file on the machine; now such links are reported, not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "stranger.toml").write_text('prompt = "from outside"\n')
    root = make_fleet(tasks={"own.toml": 'prompt = "mine"\n'})
    (root / "tasks" / "rootlink").symlink_to(outside)
    (root / "tasks" / "filelink.toml").symlink_to(outside / "stranger.toml")
    (root / "shared").mkdir()
    (root / "shared" / "inside.toml").write_text('prompt = "inside"\n')
    (root / "tasks" / "insidelink").symlink_to(root / "shared")
    taskset = load_tasks(load_config(root))
    assert sorted(taskset.tasks) == ["inside", "own"], "a link inside the root is still followed"
    problems = {bad.path: bad.error for bad in taskset.invalid}
    assert set(problems) == {"tasks/rootlink", "tasks/filelink.toml"}
    assert all("leads outside the fleet root" in error for error in problems.values())
