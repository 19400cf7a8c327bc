"""Confinement: paths and globs named by task files must stay inside the fleet root.

A task's ``context`` files are sent to a model and its ``workdir`` is where a
command runs, so a task file must not reach ``/etc`` through ``..``, an absolute
path or a symlink. Every check resolves symlinks (``Path.resolve``) and compares
the real path with the real root; violations are ``ConfigError`` naming the field.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path, PurePosixPath

from .errors import ConfigError

__all__ = ["confine", "expand_globs", "open_workdir"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def confine(root: Path, rel: str | Path, *, what: str) -> Path:
    """``rel`` resolved against ``root``; ConfigError if the real path lies outside the real root."""
    base = Path(root).resolve()
    shown = str(rel)
    try:
        target = (base / rel).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: symlink loop (3.11)
        raise ConfigError(f"cannot resolve {shown!r} ({exc}); fix the path", key=what) from exc
    if target == base or target.is_relative_to(base):
        return target
    lexical = Path(os.path.normpath(base / rel))
    if lexical == base or lexical.is_relative_to(base):
        reason = f"{shown!r} leads through a symlink to {str(target)!r}, outside the fleet root"
    else:
        reason = f"{shown!r} is outside the fleet root {str(base)!r}"
    raise ConfigError(f"{reason}; use a path inside the fleet root", key=what)


def expand_globs(root: Path, patterns: list[str], *, what: str, missing_ok: bool = False) -> list[Path]:
    """Real paths of the files matched by ``patterns`` (relative to root), confined and deduplicated.

    Order is stable: pattern order, then sorted path within a pattern. A pattern
    that matches no file is an error unless ``missing_ok`` (used at load time, when
    a file may still be produced by a task's dependency).
    """
    base = Path(root).resolve()
    seen: set[Path] = set()
    out: list[Path] = []
    for pattern in patterns:
        _check_pattern(pattern, what)
        found = False
        for match in sorted(glob.glob(pattern, root_dir=base, recursive=True)):
            path = confine(base, match, what=what)
            if not path.is_file():
                continue
            found = True
            if path not in seen:
                seen.add(path)
                out.append(path)
        if not found and not missing_ok:
            raise ConfigError(f"pattern {pattern!r} matches no file under the fleet root; "
                              "fix the pattern or create the file", key=what)
    return out


def _check_pattern(pattern: str, what: str) -> None:
    """Reject patterns that are empty, absolute or climb out with '..' before globbing."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError("empty pattern; give a glob relative to the fleet root, e.g. \"docs/*.md\"", key=what)
    if "\0" in pattern:
        raise ConfigError(f"pattern {pattern!r} contains a NUL byte; remove it", key=what)
    if os.path.isabs(pattern) or pattern.startswith("~"):
        raise ConfigError(f"pattern {pattern!r} is absolute; write it relative to the fleet root", key=what)
    depth = 0
    for part in PurePosixPath(pattern.replace(os.sep, "/")).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise ConfigError(f"pattern {pattern!r} climbs out of the fleet root with '..'; "
                              "use a path inside it", key=what)


def open_workdir(root: Path, rel: str | Path, *, what: str = "workdir") -> int:
    """An open descriptor of the folder ``rel`` under ``root``, reached without following any symlink.

    Each component is opened relative to the one before (``O_NOFOLLOW |
    O_DIRECTORY``), starting from the root, so a folder swapped for a symlink
    between the check and the use cannot send a command outside the fleet root:
    the process enters the folder by this descriptor, not by its name. The caller
    closes it.
    """
    parts = [part for part in PurePosixPath(str(rel).replace(os.sep, "/")).parts if part not in ("", ".")]
    if PurePosixPath(str(rel)).is_absolute() or ".." in parts:
        raise ConfigError(f"{str(rel)!r} must be a relative path inside the fleet root, without '..'", key=what)
    fd = os.open(Path(root).resolve(), _DIR_FLAGS)
    try:
        for part in parts:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except OSError as exc:
        os.close(fd)
        reason = "is a symlink or not a folder" if exc.errno in (40, 20) else (exc.strerror or str(exc))
        raise ConfigError(f"{str(rel)!r}: a part of it {reason}; use a real folder inside the fleet root",
                          key=what) from exc
    return fd
