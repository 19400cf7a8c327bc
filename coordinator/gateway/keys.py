"""Keeping provider keys inside the process that holds them: not dumpable, not in its environment, not in errors.

Agents run as the same user as the gateway, and a same-user process can read
another's ``/proc/<pid>/environ`` (and memory) unless that process is marked
non-dumpable. ``protect_keys`` is called once by every process that holds keys
(``serve_forever`` and ``start_in_thread``, so ``coordinator run`` too): it marks the
process non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``: ``/proc/<pid>/environ``,
``mem`` and ptrace become root's only), copies the environment it was handed, and
removes the key variables from ``os.environ`` so nothing started later inherits
them. The kernel's copy of the start-up environment cannot be erased, which is why
the non-dumpable mark is the part that hides it. docs/security.md says what this
covers and what it does not. Standard library only at import, so a bare
interpreter can load it (the test runs it as an unprivileged user).

``Redactor`` replaces the configured key values in error messages and bodies
before they reach a client, a record or a log line: an upstream that echoes the
key in its 401 must not spread it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ..config import FleetConfig

log = logging.getLogger("coordinator.gateway")

PR_SET_DUMPABLE = 4  # <linux/prctl.h>
PR_GET_DUMPABLE = 3
REDACTED = "[redacted]"
MIN_KEY_CHARS = 8  # shorter values ("", "none", "x") are not secrets worth hunting for, and would mangle text

E = TypeVar("E", bound=BaseException)


def protect_keys(env: Mapping[str, str], config: FleetConfig) -> dict[str, str]:
    """Make this process non-dumpable and drop the key variables from ``os.environ``; returns ``env`` as a copy.

    The copy is what the backends read keys from, so ``env`` may be ``os.environ``
    itself. Idempotent.
    """
    from ..provider_keys import secret_vars  # noqa: PLC0415 - keeps this module standard library only

    kept = dict(env)
    make_undumpable()
    for name in secret_vars(config):
        os.environ.pop(name, None)
    return kept


def make_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)`` on Linux; False where it is unavailable (logged once)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = _libc()
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        log.warning("gateway: could not make this process non-dumpable (%s); other processes of this user "
                    "may read its environment", exc)
        return False
    return True


def is_dumpable() -> bool | None:
    """The process's dumpable flag (None off Linux): for tests and diagnostics."""
    if not sys.platform.startswith("linux"):
        return None
    return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def _libc() -> ctypes.CDLL:
    # The C library this process already has loaded (find_library would spawn ldconfig: ~100 ms at start-up).
    return ctypes.CDLL(None, use_errno=True)


def key_values(env: Mapping[str, str], config: FleetConfig) -> list[str]:
    """The provider keys present in ``env``, longest first (so a key inside another is not half-replaced)."""
    from ..provider_keys import secret_vars  # noqa: PLC0415

    values = {env[name] for name in secret_vars(config) if len(env.get(name) or "") >= MIN_KEY_CHARS}
    return sorted(values, key=len, reverse=True)


class Redactor:
    """Replaces known key values in text, bytes and exceptions."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = [v for v in values if len(v) >= MIN_KEY_CHARS]
        self._raw = [v.encode() for v in self.values]

    def learn(self, values: Iterable[str]) -> None:
        """Redact these keys too (a reloaded fleet.toml may name another key variable)."""
        known = set(self.values)
        self.values = sorted(known | {v for v in values if len(v) >= MIN_KEY_CHARS}, key=len, reverse=True)
        self._raw = [v.encode() for v in self.values]

    def text(self, text: str) -> str:
        """``text`` with every key replaced."""
        for value in self.values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def bytes(self, data: bytes) -> bytes:
        """``data`` with every key replaced."""
        for value in self._raw:
            if value in data:
                data = data.replace(value, REDACTED.encode())
        return data

    def exception(self, exc: E) -> E:
        """``exc`` with its message (and an upstream error ``body``) redacted in place."""
        if not self.values:
            return exc
        exc.args = tuple(self.text(a) if isinstance(a, str) else a for a in exc.args)
        body = getattr(exc, "body", None)
        if isinstance(body, bytes):
            exc.body = self.bytes(body)  # type: ignore[attr-defined]
        return exc
