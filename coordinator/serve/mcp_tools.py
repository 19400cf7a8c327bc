"""The MCP server's tools (DESIGN §11) as plain functions: plain data in, plain data out.

They do what the CLI and the HTTP API do, through the same code: tasks are admitted
by ``serve.admission`` (validated exactly as task files, then ``max_pending`` and
the fleet budget), reads are the ``report/`` read models behind ``status``,
``tasks`` and ``show --json``, cancel and retry are ``queue.ops``, and ``configure``
is ``config_edit``. A user error is a ``CoordinatorError`` whose one-line message is
the CLI's; ``mcp_server.py`` turns it into a tool error. Files are the truth, so
every tool but ``infer`` works with or without a running fleet, and the config is
read again for each call, as each CLI command reads it, so a hand edit or a
``configure`` applies to the next call.

The parameter annotations (types, bounds, descriptions) are the tools' input
schemas; the server publishes them as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic.json_schema import WithJsonSchema

from ..clock import REAL_CLOCK, Clock, poll
from ..config import FleetConfig
from ..errors import ConfigError, TaskError
from ..fleet.workspace import run_dirs
from ..queue import ops
from ..report.rows import snapshot, task_detail, task_page
from ..report.status import build_status, gateway_status
from ..store import open_store
from ..tasks import FINISHED, State
from ..tasks.cache import load_cached
from ..tasks.schema import task_json_schema
from . import mcp_gateway
from .admission import Admission
from .api import MAX_BATCH, MAX_LIMIT
from .streams import read_text

MAX_WAIT_S = 25.0  # a wait_task call returns by then: clients time tool calls out
WAIT_STEP_S = 0.2
DEFAULT_READ_BYTES = 16 * 1024
MAX_READ_BYTES = 256 * 1024
LOG_NAMES = {"stdout": "stdout.log", "stderr": "stderr.log", "acceptance": "acceptance.log"}
_ACTIVE = frozenset({str(State.PENDING), str(State.RUNNING)})  # states a wait waits through
_FINISHED = frozenset(str(state) for state in FINISHED)

TaskId = Annotated[str, Field(description="a task id, as enqueue returned it or list_tasks lists it")]
TaskTables = Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_BATCH), WithJsonSchema({
    "type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": task_json_schema()["$defs"]["Task"],
    "description": "one or more tasks, each an object of task-file keys (prompt required; id defaults to one "
                   "made from the prompt); validated exactly as task files are"})]
StateFilter = Literal["pending", "blocked", "running", "done", "failed", "invalid", "cancelled"]


class FleetTools:
    """The tools of one fleet: ``load`` reads its config (as the CLI does), ``inside_task`` the agent's task, if any."""

    def __init__(self, load: Callable[[], FleetConfig], *, inside_task: str | None = None,
                 clock: Clock = REAL_CLOCK) -> None:
        self.load = load
        self.inside_task = inside_task  # COORDINATOR_TASK_ID: this server was started by a fleet agent
        self.clock = clock

    def enqueue(self, tasks: TaskTables) -> dict[str, Any]:
        """Add tasks to the fleet's queue, as task files in tasks/ (an identical task already there is kept).

        Returns each task's id, state, place in the queue (1 = claimed next) and whether
        this call created it. Refused when the fleet's max_pending or budget is reached.
        """
        if self.inside_task is not None:
            raise TaskError(f"agents cannot enqueue into their own fleet: this MCP server runs inside fleet task "
                            f"{self.inside_task!r} (COORDINATOR_TASK_ID is set); return the work in your output "
                            "instead", task_id=self.inside_task)
        config = self.load()
        outcome = Admission(config, lambda: check_fleet_budget(config)).submit(tasks, len(tasks) > 1)
        return {"tasks": [{"task_id": row["task_id"], "state": row["state"], "queue_position": row["queue_position"],
                           "created": created} for row, created in zip(outcome.accepted, outcome.created)]}

    def fleet_status(self) -> dict[str, Any]:
        """The fleet's health, as `coordinator status --json`: tasks per state, agents, gateway savings, problems."""
        return build_status(self.load(), self.clock.wall())

    def list_tasks(self, state: Annotated[StateFilter | None, Field(description="only tasks in this state")] = None,
                   limit: Annotated[int, Field(ge=1, le=MAX_LIMIT, description="rows in this page")] = 100,
                   cursor: Annotated[str | None, Field(description="next_cursor of the previous page")] = None,
                   ) -> dict[str, Any]:
        """Tasks in priority order with their state (the rows of `coordinator tasks --json`), a page at a time."""
        if cursor is not None and not cursor.isdigit():
            raise ConfigError(f"{cursor!r} is not a next_cursor value; pass the one the previous page returned",
                              key="cursor")
        return task_page(snapshot(self.load()), state, int(cursor or 0), limit)

    def get_task(self, task_id: TaskId) -> dict[str, Any]:
        """One task, as `coordinator show --json`: definition, state, record, live claim, usage of each run."""
        return task_detail(self.load(), task_id)

    def wait_task(self, task_id: TaskId, timeout_s: Annotated[float, Field(
            description=f"seconds to wait, at most {MAX_WAIT_S:g} (call again to wait longer)")] = MAX_WAIT_S,
            ) -> dict[str, Any]:
        """Wait until a task is done, failed or cancelled, or the timeout passes; its state and whether it finished.

        Returns at once for a blocked or invalid task: it waits for someone to fix it.
        """
        config = self.load()
        row = _row(config, task_id)
        if row["state"] in _ACTIVE:
            store = open_store(config)
            for _ in poll(WAIT_STEP_S, timeout_s=min(max(timeout_s, 0.0), MAX_WAIT_S), clock=self.clock):
                record = store.read_record(task_id)
                if record is not None and record.state in FINISHED:
                    break
            row = _row(config, task_id)
        return {**row, "finished": row["state"] in _FINISHED}

    def read_output(self, task_id: TaskId,
                    offset: Annotated[int, Field(ge=0, description="byte offset: 0, then next_offset")] = 0,
                    max_bytes: Annotated[int, Field(ge=4, le=MAX_READ_BYTES, description="at most this many bytes "
                                                    "(a UTF-8 character is never split)")]
                    = DEFAULT_READ_BYTES,
                    stream: Annotated[Literal["stdout", "stderr", "acceptance"], Field(
                        description="stdout: the model's streamed output or a command's stdout")] = "stdout",
                    run: Annotated[int | None, Field(description="run folder (the claim's epoch); default the "
                                                                 "latest")] = None) -> dict[str, Any]:
        """Read a task's run log from an offset: text, next_offset, and eof once the run is over and read to its end.

        A retried task writes a new run: after eof, get_task or wait_task tell whether one is coming.
        """
        config = self.load()
        runs = run_dirs(config, task_id)
        if not runs:
            ops.require_task(load_cached(config), task_id)
        if run is not None and all(d.name != str(run) for d in runs):
            shown = ", ".join(d.name for d in runs) or "none yet"
            raise TaskError(f"task {task_id!r} has no run {run} (runs: {shown}); pick one or leave run out",
                            task_id=task_id)
        folder = next((d for d in runs if d.name == str(run)), None) if run is not None else (runs or [None])[-1]
        record = open_store(config).read_record(task_id)
        live = folder is not None and record is not None and record.state == State.RUNNING \
            and str(record.epoch) == folder.name
        path = folder / LOG_NAMES[stream] if folder is not None else None
        size = path.stat().st_size if path is not None and path.exists() else 0
        if offset > size:
            raise TaskError(f"offset {offset} is past the end of the log ({size} bytes); start from 0 or a "
                            "next_offset", task_id=task_id)
        if path is None:  # no run yet: the end only if none will ever come
            eof = record is not None and record.state in FINISHED
            return {"task_id": task_id, "run": None, "stream": stream, "text": "", "next_offset": 0, "eof": eof}
        text, end = read_text(path, offset, not live, limit=max_bytes)
        return {"task_id": task_id, "run": int(folder.name), "stream": stream, "text": text, "next_offset": end,
                "eof": end >= size and not live}

    def cancel_task(self, task_id: TaskId) -> dict[str, Any]:
        """Cancel a pending (or blocked) or running task; a running one is stopped and its process killed."""
        record = ops.cancel_task(self.load(), task_id)
        return {"task_id": task_id, "state": str(record.state)}

    def retry_task(self, task_id: TaskId) -> dict[str, Any]:
        """Run a failed, done or cancelled task again, with fresh attempts and a fresh budget."""
        record = ops.retry_task(self.load(), task_id)
        return {"task_id": task_id, "state": str(record.state)}

    def infer(self, prompt: Annotated[str, Field(min_length=1, description="the user message")],
              system: Annotated[str | None, Field(description="a system prompt")] = None,
              model: Annotated[str | None, Field(description="a [models] alias of fleet.toml, or a model name "
                                                             "(default: the default alias)")] = None,
              max_tokens: Annotated[int, Field(ge=1, le=64000)] = 1024) -> dict[str, Any]:
        """One prompt through the fleet's running gateway (deduplicated and cached like every gateway request)."""
        return mcp_gateway.infer(self.load(), prompt, system=system, model=model, max_tokens=max_tokens)

    def configure(self, fragment: Annotated[str | dict[str, Any], Field(
            description="TOML text, or a JSON object, with the [backends], [models], [[routing]] or [fleet] "
                        "max_usd / max_pending to change; tables merge key by key, null removes a key")],
            ) -> dict[str, Any]:
        """Change the fleet's backends, models, routing or limits in fleet.toml, then have the gateway reload it.

        The merged file is validated first; a config with errors is refused with its
        one-line error and fleet.toml stays as it was.
        """
        from ..config_edit import apply_fragment  # noqa: PLC0415  (tomlkit: only when configuring)

        change = apply_fragment(self.load(), fragment)
        reload = mcp_gateway.reload(change.config) if change.written else {
            "status": "unchanged", "message": "fleet.toml already says this; nothing was written"}
        return {"path": str(change.path), "keys": change.keys, "written": change.written, "reload": reload}


def check_fleet_budget(config: FleetConfig) -> None:
    """BudgetError once the fleet has spent ``[fleet] max_usd`` (the gateway's ledger, live or as last saved)."""
    if config.fleet.max_usd <= 0:
        return
    from ..gateway.budgets import check_budget  # noqa: PLC0415

    check_budget(fleet_spent=gateway_status(config)["usd"], fleet_max=config.fleet.max_usd, task_id=None,
                 task_spent=None, max_usd=None, max_tokens=None)


def _row(config: FleetConfig, task_id: str) -> dict[str, Any]:
    """The task's row (``tasks --json``): state, reason, attempts; ``TaskError`` for an unknown id."""
    snap = snapshot(config)
    row = next((r for r in snap.rows if r.id == task_id), None)
    if row is None:  # every known id has a row (an invalid task's too): this one names no task
        ops.require_task(snap.taskset, task_id)
        raise TaskError(f"no task {task_id!r}", task_id=task_id)
    return {"task_id": row.id, "state": row.state, "reason": row.reason, "attempts": row.attempts,
            "max_attempts": row.max_attempts}
