"""What fleet processes say besides state changes: notes in the event feed, and warnings on stderr.

Both must survive a state dir that cannot be written (disk full, read-only): a
lost note costs the note, never the process; and a warning repeated every loop
is printed once per interval, so a full disk is one line a minute, not a flood.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ..errors import TRANSIENT_STORE_ERRORS
from ..store import Store

WARN_EVERY_S = 30.0


class Notes:
    """One process's notes and throttled warnings, each line prefixed with who says it."""

    def __init__(self, store: Store, speaker: str, every_s: float = WARN_EVERY_S) -> None:
        self.store = store
        self.speaker = speaker
        self.every_s = every_s
        self._said: dict[str, float] = {}

    def event(self, kind: str, **fields: Any) -> None:
        """Append an event that changes no state; a full disk or an unreachable store makes it a warning."""
        try:
            self.store.append_event(kind, **fields)
        except TRANSIENT_STORE_ERRORS as exc:
            self.warn(str(exc))

    def warn(self, message: str) -> None:
        """One line on stderr, at most once per interval for the same message."""
        now = time.monotonic()
        if now - self._said.get(message, float("-inf")) >= self.every_s:
            self._said[message] = now
            print(f"{self.speaker}: {message}", file=sys.stderr, flush=True)
