"""Changing fleet.toml from a program (the MCP ``configure`` tool): merge a fragment, validate, write.

Only what a running gateway reloads live (DESIGN §12) may change this way:
``[backends]``, ``[models]``, ``[[routing]]`` and the fleet's limits (``[fleet]
max_usd`` and ``max_pending``); agents and everything else are read by processes at
start, so they are edited by hand. A fragment is a TOML or JSON text (or an
already-parsed object) holding some of those sections. Tables merge key by key, a
value replaces the one there (lists whole, so ``routing`` is replaced as a whole),
and a JSON ``null`` removes a key, giving it back its default.

The merged text is checked by the loader every command uses (``config.load_config``)
before anything is written, so a change the fleet would refuse is refused here with
the same one-line error, and the file stays as it was. It is written with tomlkit,
keeping the user's comments and layout, atomically (``atomic.py``: a reader sees
the old file or the new one), keeping its mode.
"""

from __future__ import annotations

import json
import stat
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import write_bytes_atomic
from .config import FleetConfig, load_config
from .errors import ConfigError
from .validation import toml_error_reason

LIVE_SECTIONS = ("backends", "models", "routing")
FLEET_LIMITS = ("max_usd", "max_pending")
ALLOWED = "[backends], [models], [[routing]] and [fleet] max_usd / max_pending"
_WRITING = threading.Lock()  # one read-merge-write at a time in this process


@dataclass(frozen=True)
class ConfigChange:
    """What a fragment did: the keys it set, whether the file changed, and the config now in force on disk."""

    path: Path
    keys: list[str]
    written: bool
    config: FleetConfig


def parse_fragment(fragment: str | dict[str, Any]) -> dict[str, Any]:
    """The fragment as a table of allowed sections; ``ConfigError`` (key ``fragment``) naming what is wrong."""
    if isinstance(fragment, str):
        fragment = _parse_text(fragment)
    if not fragment:
        raise ConfigError(f"the fragment is empty; give the sections to change: {ALLOWED}", key="fragment")
    for section, value in fragment.items():
        if section == "fleet" and isinstance(value, dict):
            extra = sorted(set(value) - set(FLEET_LIMITS))
            if extra:
                raise ConfigError(f"[fleet] {extra[0]} is read when processes start; change it in fleet.toml by "
                                  f"hand (configure changes {ALLOWED})", key=f"fleet.{extra[0]}")
        elif section not in LIVE_SECTIONS:
            raise ConfigError(f"{section!r} cannot be changed by configure, only {ALLOWED}; edit fleet.toml by "
                              "hand for the rest", key=section)
        elif section != "routing" and not isinstance(value, dict):
            raise ConfigError(f"[{section}] must be a table of named entries, e.g. "
                              f"{{\"{section}\": {{\"NAME\": {{...}}}}}}", key=section)
    return fragment


def apply_fragment(config: FleetConfig, fragment: str | dict[str, Any]) -> ConfigChange:
    """Merge ``fragment`` into the fleet's fleet.toml if the result is a valid config; ``ConfigError`` if not."""
    import tomlkit  # noqa: PLC0415  (the mcp extra; only this edits TOML in place)

    changes = parse_fragment(fragment)
    path = config.config_path.resolve()  # a symlinked fleet.toml: its target is rewritten, the link kept
    with _WRITING:
        try:
            original = path.read_text(encoding="utf-8") if path.exists() else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("cannot read it; make it a readable UTF-8 file", path=path) from exc
        document = tomlkit.parse(original)
        _merge(document, changes)
        text = tomlkit.dumps(document)
        merged = load_config(config.root, content=text.encode("utf-8"))  # the loader's checks, before writing
        written = text != original
        if written:
            mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
            write_bytes_atomic(path, text.encode("utf-8"), mode=mode)
    return ConfigChange(path=path, keys=sorted(_leaf_keys(changes)), written=written, config=merged)


def _parse_text(text: str) -> dict[str, Any]:
    text = text.strip()
    try:
        data = json.loads(text) if text.startswith("{") else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the fragment is not valid JSON ({exc.msg} at line {exc.lineno}); give a JSON object "
                          "or TOML text", key="fragment") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the fragment is not valid TOML ({toml_error_reason(exc)}); give TOML text or a JSON "
                          "object", key="fragment") from exc
    if not isinstance(data, dict):
        raise ConfigError("the fragment must be a table (a JSON object or TOML text)", key="fragment")
    return data


def _merge(table: Any, changes: dict[str, Any]) -> None:
    """Merge ``changes`` into a tomlkit table in place: tables key by key, other values replaced, None removed."""
    for key, value in changes.items():
        if value is None:
            table.pop(key, None)
        elif isinstance(value, dict) and isinstance(table.get(key), dict):
            _merge(table[key], value)
        else:
            table[key] = _without_nulls(value)


def _without_nulls(value: Any) -> Any:
    """A new value with None dropped (TOML has no null; for a new table, null means "the default")."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value if v is not None]
    return value


def _leaf_keys(changes: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of what a fragment sets (``backends.fast.rpm``); a list counts as one value."""
    keys = []
    for key, value in changes.items():
        name = f"{prefix}{key}"
        keys.extend(_leaf_keys(value, f"{name}.") if isinstance(value, dict) and value else [name])
    return keys
