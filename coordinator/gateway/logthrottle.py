"""Log lines from the gateway's process: keys redacted, and a repeated error logged once per interval with a count.

Why: a slowloris flood once sent 864,255 tracebacks (350 MB) to stderr, one per
refused or broken connection, and an upstream that echoes the key in its 401
would have put the key in every one. ``LogGuard`` is a ``logging.Filter`` attached
to the loggers the gateway's process writes through (its own, the backends',
aiohttp's and asyncio's): the first record of a kind (logger, level, message
template) in an interval passes, later ones are counted, and the next one to pass
says how many were held back. Every record that passes has the configured keys
replaced, in its message and its traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .keys import Redactor

INTERVAL_S = 10.0
LOGGERS = ("coordinator.gateway", "coordinator.backends", "aiohttp.server", "aiohttp.web", "aiohttp.access",
           "asyncio")
_MAX_KINDS = 1000  # distinct templates remembered; more means a new interval for all
_FORMATTER = logging.Formatter()


class LogGuard(logging.Filter):
    """Redacts keys and throttles repeats, per (logger, level, template)."""

    def __init__(self, redactor: Redactor, *, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.redactor = redactor
        self.interval_s = interval_s
        self.clock = clock
        self._kinds: dict[tuple[str, int, str], list[float]] = {}  # kind → [window start, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass the first record of its kind per interval (noting how many were held back), redacted."""
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            return False
        if len(self._kinds) >= _MAX_KINDS:
            self._kinds.clear()
        held = int(seen[1]) if seen is not None else 0
        self._kinds[kind] = [now, 0]
        self._rewrite(record, held)
        return True

    def _rewrite(self, record: logging.LogRecord, held: int) -> None:
        message = record.getMessage()
        if held:
            message += f" ({held} more like this in the last {self.interval_s:g} s were not logged)"
        record.msg, record.args = self.redactor.text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)


def install(guard: LogGuard) -> Callable[[], None]:
    """Attach ``guard`` to the gateway process's loggers; returns the function that detaches it."""
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for logger in loggers:
        logger.addFilter(guard)

    def remove() -> None:
        for logger in loggers:
            logger.removeFilter(guard)
    return remove
