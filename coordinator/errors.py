"""The whole exception tree of coordinator.

::

    CoordinatorError
    ├── ConfigError(path, key)          bad fleet.toml or task file
    ├── TaskError(task_id)              unknown id, invalid state change
    ├── ClaimLostError(task, epoch)     fencing: someone else holds the task now
    ├── StateError(path)                the state folder cannot be written (disk full, read-only)
    ├── StoreError(url)                 a networked store (Redis) is not usable
    │   ├── StoreUnavailableError       it cannot be reached
    │   └── IncarnationError            it was wiped or replaced under the fleet
    ├── FleetRunningError(pid)          a second `coordinator run` (or gateway) in a fleet root that has one
    ├── NoGatewayError(root, url)       no gateway serves the fleet (or it did not answer)
    ├── BudgetError(scope, limit)       a task or the fleet is past its budget
    ├── QueueFullError(limit, waiting)  [fleet] max_pending tasks are waiting: no new task is admitted
    ├── GitError(argv, returncode)      a git command of the workspace lifecycle failed
    └── BackendError(backend)
        ├── RetryableError(retry_after_s)
        │   └── MalformedEventError(event)  an SSE event that is not UTF-8, or not the JSON expected
        ├── FatalBackendError(status)
        │   └── CacheControlError           a request breaks a prompt-caching rule (400)
        ├── CircuitOpenError(until)
        └── StreamBrokenError(usage)        a stream failed after clients received part of it

Foreign exceptions (SDKs, OS, TOML) are translated once, at the boundary that
meets them (``raise X(msg) from exc``). ``cli.py`` catches ``CoordinatorError``
once, prints ``str(err)`` on one line and exits with ``err.exit_code``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class CoordinatorError(Exception):
    """Base of every error coordinator raises on purpose."""

    exit_code = 1


class ConfigError(CoordinatorError):
    """A fleet.toml or task file is wrong; the message names the file, key and fix."""

    exit_code = 2

    def __init__(self, message: str, *, path: Path | str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.key = key
        self.line = line
        self.reason = message
        where = self.path or ""
        if where and line:
            where += f":{line}"
        prefix = f"{where}: " if where else ""
        field = f"{key}: " if key else ""
        super().__init__(f"{prefix}{field}{message}")


class TaskError(CoordinatorError):
    """An unknown task id, or a state change the task's state does not allow."""

    exit_code = 2

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        self.task_id = task_id
        super().__init__(message)


class ClaimLostError(CoordinatorError):
    """Fencing: the caller's claim on ``task`` is gone or was superseded."""

    def __init__(self, task: str, epoch: int, reason: str = "") -> None:
        self.task = task
        self.epoch = epoch
        detail = f": {reason}" if reason else ""
        super().__init__(f"claim on task {task!r} at epoch {epoch} was lost{detail}")


class StateError(CoordinatorError):
    """A state file could not be written; the message names the path and the fix."""

    def __init__(self, path: Path | str, exc: OSError) -> None:
        self.path = str(path)
        self.errno = exc.errno
        reason = exc.strerror or str(exc)
        fix = "free some disk space" if exc.errno == 28 else f"make {Path(path).parent} writable"
        super().__init__(f"cannot write {path} ({reason}); {fix}, then try again")


class StoreError(CoordinatorError):
    """A networked store (Redis) is not usable; ``url`` names it without its password."""

    def __init__(self, message: str, *, url: str = "") -> None:
        self.url = url
        super().__init__(message)


class StoreUnavailableError(StoreError):
    """The store cannot be reached (refused, timed out, reset); worth waiting for."""

    def __init__(self, url: str, reason: str = "") -> None:
        detail = f" ({reason})" if reason else ""
        super().__init__(f"cannot reach the state store at {url}{detail}; start it or fix [fleet] state, "
                         f"then try again", url=url)


# A state write that failed now and may succeed later: a full or read-only disk, an
# unreachable store. Agents wait and retry on these; anything else is a real error.
TRANSIENT_STORE_ERRORS = (StateError, StoreUnavailableError)


class IncarnationError(StoreError):
    """The store's incarnation is missing or not the one this fleet knew: it was wiped or replaced.

    Going on would reissue epochs that fenced claims already hold, so the fleet halts.
    """

    def __init__(self, url: str, expected: str, found: str | None, *, marker: Path | str | None = None) -> None:
        self.expected = expected
        self.found = found
        what = "has no incarnation" if found is None else f"has incarnation {found}, not {expected}"
        undo = f"; if that is intended, delete {marker} and start again" if marker else ""
        super().__init__(f"the state store at {url} {what}: it was wiped or replaced, so the fleet halts "
                         f"rather than reissue claims{undo}", url=url)


class FleetRunningError(CoordinatorError):
    """One fleet per root: a `coordinator run` is already working in it."""

    exit_code = 2

    def __init__(self, root: Path | str, pid: int | None, *, what: str = "a fleet",
                 hint: str = "watch it with `coordinator status`, add workers with `coordinator agent`, "
                             "or stop it before starting another") -> None:
        self.pid = pid
        who = f" (pid {pid})" if pid else ""
        super().__init__(f"{what} is already running in {root}{who}; {hint}")


class NoGatewayError(CoordinatorError):
    """A command needs the fleet's running gateway, and none serves it (or it did not answer)."""

    def __init__(self, root: Path | str, url: str | None = None, reason: str = "") -> None:
        self.root = str(root)
        self.url = url
        if url is None:
            message = (f"no gateway is running for {root}; start one with `coordinator gateway` "
                       "(or `coordinator run`, which serves one)")
        else:
            message = f"the gateway at {url} did not answer ({reason}); check it with `coordinator status`"
        super().__init__(message)


class BudgetError(CoordinatorError):
    """A task or the fleet has spent its budget."""

    def __init__(self, message: str, *, scope: str, limit: float) -> None:
        self.scope = scope
        self.limit = limit
        super().__init__(message)


class QueueFullError(CoordinatorError):
    """``[fleet] max_pending`` tasks are waiting (pending or blocked): a new task is not admitted now."""

    def __init__(self, *, limit: int, waiting: int, retry_after_s: int = 5) -> None:
        self.limit = limit
        self.waiting = waiting
        self.retry_after_s = retry_after_s
        super().__init__(f"{waiting} tasks are waiting and [fleet] max_pending is {limit}; retry later, or raise "
                         "max_pending in fleet.toml")


class GitError(CoordinatorError):
    """A git command failed; the message names the command and git's own last line."""

    def __init__(self, argv: list[str], returncode: int | None, stderr: str = "") -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "no output")
        super().__init__(f"`{' '.join(argv[:4])}` failed ({returncode}): {last}")


class BackendError(CoordinatorError):
    """An inference backend failed; ``backend`` names it."""

    def __init__(self, message: str, *, backend: str = "") -> None:
        self.backend = backend
        super().__init__(message)


class RetryableError(BackendError):
    """A failure worth retrying (429, 5xx, 529, connection errors, timeouts)."""

    def __init__(self, message: str, *, backend: str = "", retry_after_s: float | None = None,
                 status: int | None = None) -> None:
        self.retry_after_s = retry_after_s
        self.status = status
        super().__init__(message, backend=backend)


class FatalBackendError(BackendError):
    """A failure that retrying cannot fix (400, 401, 404, ...)."""

    def __init__(self, message: str, *, backend: str = "", status: int = 500,
                 body: bytes | None = None) -> None:
        self.status = status
        self.body = body
        super().__init__(message, backend=backend)


class CircuitOpenError(BackendError):
    """The backend's circuit breaker is open until ``until`` (monotonic seconds)."""

    def __init__(self, message: str, *, backend: str = "", until: float = 0.0,
                 retry_after_s: float = 1.0) -> None:
        self.until = until
        self.retry_after_s = retry_after_s
        super().__init__(message, backend=backend)


class MalformedEventError(RetryableError):
    """An SSE event that is not UTF-8, or whose data is not the JSON object it should be.

    A malformed answer is worth retrying before anything reached a client; ``event``
    holds the first bytes of the offending event for the log line.
    """

    def __init__(self, message: str, *, event: bytes = b"", backend: str = "") -> None:
        self.event = event[:200]
        super().__init__(message, backend=backend, status=502)


class CacheControlError(FatalBackendError):
    """The request breaks a prompt-caching rule; the API answers 400 invalid_request_error."""

    def __init__(self, message: str, *, backend: str = "") -> None:
        super().__init__(message, backend=backend, status=400)


class StreamBrokenError(BackendError):
    """A stream failed after its first events reached clients: it cannot be retried.

    ``usage`` is what the provider reported before the break (it bills that);
    ``reported`` says the upstream's own error event already reached the clients.
    """

    def __init__(self, message: str, *, backend: str = "", usage: Any = None, reported: bool = False) -> None:
        self.usage = usage
        self.reported = reported
        super().__init__(message, backend=backend)
