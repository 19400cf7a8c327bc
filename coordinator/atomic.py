"""Atomic file writes and tolerant reads: the one owner of how state files reach the disk.

Every state file is written whole to a temporary file in the same folder and
moved over the old one with ``os.replace``, which is atomic on POSIX: a reader
in any process sees the old file or the new one, never half of one, even when
the writer is killed mid-write. No fsync: the protocol survives process death,
which the page cache outlives; power loss is out of scope
(docs/architecture.md, "State on disk").
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

PRIVATE_FILE = 0o600  # state files: other users read none of it (docs/security.md)
PRIVATE_DIR = 0o700
USER_UMASK_ENV = "COORDINATOR_USER_UMASK"  # the user's umask, kept for the programs tasks run


def private_umask() -> int:
    """Create everything private from now on (0600 files, 0700 folders); the umask to give children.

    The state folder holds prompts, outputs and logs, some copied from files only
    their owner may read. Processes that write state call this once; the programs
    they run for tasks get the user's own umask back (``run_process``), so files an
    agent writes in the user's repository keep their usual modes.
    """
    previous = os.umask(0o077)
    inherited = os.environ.get(USER_UMASK_ENV)
    if inherited is None:
        os.environ[USER_UMASK_ENV] = oct(previous)
        return previous
    return int(inherited, 8)


def write_bytes_atomic(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` so that readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(Path(tmp))
        raise


def write_json_atomic(path: Path, data: Any, *, mode: int | None = None, indent: int | None = None) -> None:
    """Write ``data`` as JSON to ``path`` atomically (compact unless ``indent`` is given)."""
    separators = (",", ":") if indent is None else None
    text = json.dumps(data, separators=separators, indent=indent, default=str)
    write_bytes_atomic(path, text.encode("utf-8"), mode=mode)


def write_new_file(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` whole; False (and nothing written) if it already exists.

    ``link()`` fails when the name exists, so two writers racing for one name
    never overwrite each other, and no reader ever sees the file half-written.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        _unlink_quietly(Path(tmp))


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it does not exist or is garbled."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, IsADirectoryError, NotADirectoryError):
        return None


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
