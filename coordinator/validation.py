"""Turn pydantic and TOML errors into one-line, fix-naming messages.

Both fleet.toml and task files are validated by pydantic models; this module is
the single place that renders their errors for people: every error, not only the
first, so ``coordinator validate`` can show all of a file's problems in one pass.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

_FIXES = {
    "extra_forbidden": "unknown key; remove it or check its spelling",
    "missing": "required key is missing; add it",
}
# Pydantic's wording for the type errors a hand-written TOML file meets most, made to say the fix
# (task files and fleet.toml alike).
TYPE_FIXES = {
    "string_type": 'must be a string, in quotes: "..."',
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": 'must be a list, e.g. ["a", "b"]',
    "dict_type": "must be a table, e.g. [vars] or { name = \"value\" }",
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


KnownKeys = Iterable[str] | Callable[[tuple[Any, ...]], Iterable[str]]


def first_error(exc: ValidationError, *, fixes: Mapping[str, str] | None = None,
                known_keys: KnownKeys = ()) -> tuple[str, str]:
    """The (field, message) of the first validation error, worded for a person (see ``all_errors``)."""
    return all_errors(exc, fixes=fixes, known_keys=known_keys)[0]


def all_errors(exc: ValidationError, *, fixes: Mapping[str, str] | None = None,
               known_keys: KnownKeys = ()) -> list[tuple[str, str]]:
    """Every validation error as (field, message), worded for a person, in pydantic's order.

    ``fixes`` rewords chosen pydantic error types (the input is still shown);
    ``known_keys`` lets an unknown key suggest the key it was likely meant to be:
    the valid top-level keys, or a function from the unknown key's table (its
    location without the key) to the keys valid there.
    """
    return [_worded(err, fixes or {}, known_keys) for err in exc.errors(include_url=False)]


def _worded(err: Any, fixes: Mapping[str, str], known_keys: KnownKeys) -> tuple[str, str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = err["type"]
    msg = _FIXES.get(kind) or fixes.get(kind) or err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind not in _FIXES and "input" in err and not isinstance(err["input"], (dict, list)):
        value = err["input"]
        shown = ("true" if value else "false") if isinstance(value, bool) else repr(value)  # as TOML spells it
        if len(shown) > 60:
            shown = shown[:57] + "..."
        msg = f"{msg} (got {shown})"
    if kind == "extra_forbidden" and loc:
        if callable(known_keys):
            msg += did_you_mean(str(loc[-1]), known_keys(loc[:-1]))
        elif len(loc) == 1:
            msg += did_you_mean(str(loc[0]), known_keys)
    return field_path(loc), msg


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A " (did you mean 'x'?)" suffix naming the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def key_line(text: str, key: str, start: int = 1, end: int | None = None) -> int | None:
    """Best-effort line of the first assignment to ``key`` in TOML ``text``, within lines start..end."""
    if not key:
        return None
    leaf = key.split(".")[-1].split("[")[0]
    for number, line in enumerate(text.splitlines()[start - 1:end], start=start):
        stripped = line.lstrip()
        if stripped.startswith(leaf) and stripped[len(leaf):].lstrip().startswith("="):
            return number
    return None


def header_lines(text: str) -> list[tuple[int, str]]:
    """Every table header in TOML ``text`` as (line, header), e.g. (4, "[[tasks]]")."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            out.append((number, stripped.split("#", 1)[0].strip()))
    return out


def decode_error_line(data: bytes, exc: UnicodeDecodeError) -> int:
    """The 1-based line holding the first byte that is not valid UTF-8."""
    return data.count(b"\n", 0, exc.start) + 1
