"""The persistent cache of parsed task files can make reads faster, never wrong."""

from __future__ import annotations

import os
from pathlib import Path

from coordinator.config import load_config
from coordinator.tasks.cache import cache_path, open_index, save_index

FLEET = """
[agents.sh]
kind = "command"
command = ["true"]
"""


def load(root: Path):
    config = load_config(root)
    index = open_index(config)
    taskset = index.refresh()
    save_index(config, index)
    return index, taskset


def age(path: Path, seconds: float = 60) -> None:
    """Move a file's mtime into the past, so it is not within the racy-timestamp window."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - int(seconds * 1e9)))


def test_unchanged_files_are_not_parsed_again_by_a_new_process_view(make_fleet) -> None:
    root = make_fleet(FLEET, {f"t{n}.toml": f'prompt = "p{n}"\nagent = "sh"\n' for n in range(20)})
    for path in (root / "tasks").iterdir():
        age(path)
    first, taskset = load(root)
    assert first.parsed == 20 and len(taskset.tasks) == 20
    assert cache_path(load_config(root)).exists()
    second, again = load(root)
    assert second.parsed == 0 and set(again.tasks) == set(taskset.tasks)


def test_an_edited_file_is_parsed_again(make_fleet) -> None:
    root = make_fleet(FLEET, {"a.toml": 'prompt = "old"\n', "b.toml": 'prompt = "b"\n'})
    for path in (root / "tasks").iterdir():
        age(path)
    load(root)
    (root / "tasks" / "a.toml").write_text('prompt = "new text"\npriority = 1\n')
    index, taskset = load(root)
    assert index.parsed == 1 and taskset.tasks["a"].prompt == "new text" and taskset.tasks["a"].priority == 1


def test_a_fleet_toml_change_invalidates_the_cache(make_fleet) -> None:
    root = make_fleet(FLEET, {"a.toml": 'prompt = "x"\nagent = "sh"\n'})
    age(root / "tasks" / "a.toml")
    _, taskset = load(root)
    assert "a" in taskset.tasks
    (root / "fleet.toml").write_text("")  # [agents.sh] is gone: the task is now invalid
    index, taskset = load(root)
    assert index.parsed == 1 and "a" not in taskset.tasks
    assert "agent" in taskset.invalid[0].error


def test_a_corrupt_cache_is_ignored_and_rebuilt(make_fleet) -> None:
    root = make_fleet(FLEET, {"a.toml": 'prompt = "x"\n'})
    age(root / "tasks" / "a.toml")
    load(root)
    cache_path(load_config(root)).write_bytes(b"not a pickle at all")
    index, taskset = load(root)
    assert index.parsed == 1 and "a" in taskset.tasks
    index, _ = load(root)
    assert index.parsed == 0
