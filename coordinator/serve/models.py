"""The HTTP task API's bodies as pydantic models: the handlers send them, ``openapi.py`` documents them.

A response body is built by the handler as plain data (from ``report/`` and
``queue/ops.py``), then passed through its model here (``render``), so a reply
that drifted from the documented shape fails loudly in the tests rather than
silently in a client. Requests are task-file tables, validated by the task-file
parser itself (``queue.ops.prepare_tables``); their schema is the task file's
(``tasks/schema.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ..report.rows import TaskRow
from ..store import Claim, Record
from ..tasks import State

StateName = Literal["pending", "blocked", "running", "done", "failed", "invalid", "cancelled"]
assert set(StateName.__args__) == {str(s) for s in State}  # type: ignore[attr-defined]  # one list of states


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Links(_Body):
    """Where to follow and act on a task."""

    self: str
    events: str
    cancel: str
    retry: str


class Accepted(_Body):
    """A task the queue holds: its id, state, place in the queue, and links."""

    task_id: str
    state: StateName
    queue_position: int | None = Field(description="1 = claimed next; null when it is not pending")
    links: Links


class AcceptedBatch(_Body):
    """Each task of a ``{"tasks": [...]}`` submission, in order."""

    tasks: list[Accepted]


class ErrorDetail(BaseModel):
    """What went wrong, for a program (``type``) and for a person (``message``, with the fix)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="invalid_task, invalid_request, unauthorized, forbidden, bad_host, bad_origin, "
                                  "not_found, conflict, queue_full, budget_exhausted")
    message: str
    field: str | None = Field(None, description="the task-file key at fault (invalid_task)")
    policy: dict[str, Any] | None = Field(None, description="the admission limit that refused (429)")


class ErrorBody(_Body):
    """Every error of the API."""

    error: ErrorDetail


class TaskPage(_Body):
    """One page of ``tasks --json`` rows."""

    tasks: list[TaskRow]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class TaskDetail(BaseModel):
    """``coordinator show --json``: the definition, derived state, record, live claim and per-run usage."""

    model_config = ConfigDict(extra="forbid")

    task: dict[str, Any]
    state: StateName
    reason: str | None
    record: Record | None
    claim: Claim | None
    runs_dir: str | None
    run_usage: list[Any]
    last_run_prompt: dict[str, Any] | None = Field(None, description="the prompt the latest run used, when the "
                                                                      "task file has changed it since")
    problems: list[str] | None = Field(None, description="every problem of an invalid task")
    routing: dict[str, Any] | None = Field(None, description="usage per [models] alias the task was routed to")


class TaskAction(_Body):
    """A task after ``cancel`` or ``retry``."""

    task_id: str
    state: StateName


class LoginCode(_Body):
    """A one-time dashboard login link (``coordinator ui`` prints ``url``)."""

    url: str = Field(description="open it in a browser once, within expires_in_s, to sign in to /ui/")
    code: str
    expires_in_s: float


class StatusReport(BaseModel):
    """``coordinator status --json`` (docs/architecture.md has each key)."""

    model_config = ConfigDict(extra="allow")

    tasks: dict[str, int]
    agents: list[dict[str, Any]]
    gateway: dict[str, Any]
    stale_claims: list[dict[str, Any]]
    invalid_files: list[dict[str, Any]]
    healthy: bool
    problems: list[str]
    paused: bool


# The data of each SSE frame (documented in the OpenAPI components; docs/api.md has the framing).
class StateFrame(_Body):
    """``event: state``: the task's state, after each transition (and once on connect)."""

    state: StateName
    event: str | None = Field(None, description="the event-log kind that moved it (claimed, done, ...)")
    attempt: int | None = None


class OutputFrame(_Body):
    """``event: output``: the next chunk of a run's log."""

    text: str
    stream: Literal["stdout", "stderr"]
    run: int = Field(description="the run folder (the claim's epoch)")


class UsageFrame(_Body):
    """``event: usage``: the task's usage once it finished, as its record holds it."""

    usage: dict[str, Any]
    attempts: int


class EndFrame(_Body):
    """``event: end``: the last frame; the stream closes after it."""

    state: Literal["done", "failed", "cancelled"]


FRAMES: tuple[type[BaseModel], ...] = (StateFrame, OutputFrame, UsageFrame, EndFrame)
_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def render(model: Any, data: Any) -> Any:
    """``data`` checked against ``model`` and dumped as JSON-ready data (the one exit of every body)."""
    adapter = _ADAPTERS.get(model) or _ADAPTERS.setdefault(model, TypeAdapter(model))
    return adapter.dump_python(adapter.validate_python(data), mode="json", exclude_unset=True)
