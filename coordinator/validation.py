"""Turn pydantic and TOML errors into one-line, fix-naming messages.

Both fleet.toml and task files are validated by pydantic models; this module is
the single place that renders their errors for people.
"""

from __future__ import annotations

import tomllib
from typing import Any

from pydantic import ValidationError

_FIXES = {
    "extra_forbidden": "unknown key; remove it or check its spelling",
    "missing": "required key is missing; add it",
}


def field_path(loc: tuple[Any, ...]) -> str:
    """Dotted path of a pydantic error location, with list indexes in brackets."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def first_error(exc: ValidationError) -> tuple[str, str]:
    """The (field, message) of the first validation error, worded for a person."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    msg = _FIXES.get(err["type"]) or err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] not in _FIXES and "input" in err and not isinstance(err["input"], (dict, list)):
        shown = repr(err["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        msg = f"{msg} (got {shown})"
    return field_path(loc), msg


def toml_error_line(exc: tomllib.TOMLDecodeError) -> int | None:
    """The line number a TOML syntax error points at, when tomllib says it."""
    lineno = getattr(exc, "lineno", None)
    if lineno:
        return int(lineno)
    text = str(exc)
    marker = "(at line "
    if marker in text:
        tail = text.split(marker, 1)[1]
        digits = tail.split(",", 1)[0]
        if digits.isdigit():
            return int(digits)
    return None


def toml_error_reason(exc: tomllib.TOMLDecodeError) -> str:
    """The TOML syntax error without its position suffix."""
    msg = getattr(exc, "msg", None) or str(exc).split(" (at ", 1)[0]
    return f"TOML syntax error: {msg}"


def key_line(text: str, key: str) -> int | None:
    """Best-effort line of the first assignment to ``key`` in TOML ``text``."""
    if not key:
        return None
    leaf = key.split(".")[-1].split("[")[0]
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip()
        if stripped.startswith(leaf) and stripped[len(leaf):].lstrip().startswith("="):
            return number
    return None
