"""ConfigWatch: a fleet.toml change is taken once per new content, and never while the file may be half written."""

from __future__ import annotations

import os
import time
from pathlib import Path

from coordinator.config_watch import ConfigWatch


def settle(path: Path) -> None:
    """Make the file look written long ago."""
    old = time.time() - 10
    os.utime(path, (old, old))


def test_a_truncated_file_just_written_is_not_taken_for_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text("[fleet]\nagents = 2\n")
    settle(path)
    watch = ConfigWatch(path)
    assert not watch.changed()
    path.write_text("")  # an editor truncates first: an empty fleet.toml would be all defaults
    assert not watch.changed()
    path.write_text("[fleet]\nagents = 3\n")
    settle(path)
    assert watch.changed() and watch.content == b"[fleet]\nagents = 3\n"
    assert not watch.changed()  # once per change
    path.write_text("[fleet]\nagents = 3\n")  # the same text rewritten: no change
    settle(path)
    assert not watch.changed()


def test_waiting_takes_a_fresh_file_once_it_is_quiet(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text("[fleet]\nagents = 2\n")
    settle(path)
    watch = ConfigWatch(path)
    path.write_text("[fleet]\nagents = 4\n")  # just now
    assert watch.changed(wait=True) and watch.content == b"[fleet]\nagents = 4\n"
