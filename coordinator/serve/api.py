"""The HTTP task API under ``/v1/coordinator/`` (DESIGN §11): thin handlers over ``queue/ops.py`` and ``report/``.

Files stay the truth: ``POST /tasks`` writes task files as ``add`` does (through
``queue.ops``), reads come from the same read models as ``tasks``, ``show`` and
``status --json``, so the API answers the same with or without agents running.
Blocking file work runs on worker threads, never on the gateway's loop. ``ROUTES``
is the one table of routes: ``mount`` serves it and ``openapi.py`` documents it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..clock import REAL_CLOCK, Clock
from ..config import FleetConfig
from ..errors import BudgetError, ConfigError, QueueFullError, TaskError
from ..fleet.workspace import runs_root
from ..queue import ops
from ..report.rows import STATES, snapshot, task_detail, task_page
from ..report.status import build_status
from ..store import open_store
from ..tasks.cache import load_cached
from . import access
from .access import ANY, FLEET, OWN_TASK, error, reply
from .admission import Admission
from .models import AcceptedBatch, ErrorBody, LoginCode, StatusReport, TaskAction, TaskDetail, TaskPage, render
from .sessions import Sessions
from .streams import SSE, Streams, TaskPosition, decode_feed_id
from .tailer import Tailer

PREFIX = "/v1/coordinator"
MAX_LIMIT = 1000
MAX_BATCH = 1000


@dataclass(frozen=True)
class Route:
    """One endpoint: what serves it, who may call it, and what the OpenAPI document says of it."""

    method: str
    path: str
    handler: str
    scope: str
    summary: str
    responses: dict[int, Any]  # status -> model, "sse", or None (no body)
    query: tuple[tuple[str, dict[str, Any], str], ...] = ()
    body: bool = False


def _error_statuses(*extra: int) -> dict[int, Any]:
    return {status: ErrorBody for status in (401, 403, *extra)}


_FOLLOW = ("follow", {"type": "boolean", "default": True}, "keep streaming (false: send what there is, then close)")
_LAST_ID = ("last_event_id", {"type": "string"}, "resume after this frame id (as the Last-Event-ID header)")
ROUTES = (
    Route("POST", "/tasks", "submit", FLEET, "Add one task (task-file keys) or several ({\"tasks\": [...]})",
          {202: "accepted", 200: "accepted", **_error_statuses(400, 409, 413, 429)}, body=True),
    Route("GET", "/tasks", "list_tasks", FLEET, "The rows of `coordinator tasks --json`, paged",
          {200: TaskPage, **_error_statuses(400)},
          query=(("state", {"type": "string", "enum": list(STATES)}, "only tasks in this state"),
                 ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}, "rows a page"),
                 ("cursor", {"type": "string", "pattern": "^[0-9]+$"}, "next_cursor of the previous page"))),
    Route("GET", "/tasks/{task_id}", "show", OWN_TASK, "`coordinator show --json`",
          {200: TaskDetail, **_error_statuses(404)}),
    Route("POST", "/tasks/{task_id}/cancel", "cancel", FLEET, "Cancel a pending or running task (it is killed)",
          {200: TaskAction, **_error_statuses(404, 409)}),
    Route("POST", "/tasks/{task_id}/retry", "retry", FLEET, "Run a done, failed or cancelled task again",
          {200: TaskAction, **_error_statuses(404, 409)}),
    Route("GET", "/tasks/{task_id}/events", "task_events", OWN_TASK,
          "SSE: state, output, usage, then end; resumable with Last-Event-ID",
          {200: "sse", 204: None, **_error_statuses(400, 404)}, query=(_FOLLOW, _LAST_ID)),
    Route("GET", "/events", "fleet_events", FLEET, "SSE of the fleet's event log; resumable with Last-Event-ID",
          {200: "sse-fleet", **_error_statuses(400)}, query=(_FOLLOW, _LAST_ID)),
    Route("GET", "/status", "status", FLEET, "`coordinator status --json`", {200: StatusReport, **_error_statuses()}),
    Route("GET", "/openapi.json", "openapi", ANY, "This document", {200: "openapi", **_error_statuses()}),
    Route("POST", "/login-codes", "login_code", FLEET, "A one-time login link to the web dashboard (`coordinator ui`)",
          {200: LoginCode, **_error_statuses()}),
)


class TaskApi:
    """The task API of one server: its config, store, tailer, admission and dashboard sessions."""

    def __init__(self, config: FleetConfig, check_budget: Callable[[], None], clock: Clock = REAL_CLOCK) -> None:
        self.config = config
        self.store = open_store(config)
        self.tailer = Tailer(self.store, lambda task_id: runs_root(config, task_id))
        self.streams = Streams(self.store, self.tailer, lambda task_id: runs_root(config, task_id))
        self.admission = Admission(config, check_budget)
        self.sessions = Sessions(clock)

    def mount(self, app: web.Application, authenticate: access.Authenticate) -> None:
        """Add every route of ``ROUTES`` to ``app``, each behind its access check (a token or a dashboard session)."""
        for route in ROUTES:
            handler = access.guarded(getattr(self, route.handler), route.scope, authenticate,
                                     self.sessions.is_signed_in)
            app.router.add_route(route.method, PREFIX + route.path, handler)

        async def stop_tailer(_: web.Application) -> None:
            await self.tailer.stop()
        app.on_cleanup.append(stop_tailer)

    async def submit(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read(), parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, "invalid_request", f"the body is not JSON ({exc}); send a JSON object of task-file keys")
        batch = isinstance(body, dict) and set(body) == {"tasks"}
        tables = body["tasks"] if batch else [body]
        if not isinstance(tables, list) or not 0 < len(tables) <= MAX_BATCH:
            return error(400, "invalid_request", f"tasks must be a list of 1 to {MAX_BATCH} task objects")
        try:
            outcome = await asyncio.to_thread(self.admission.submit, tables, batch)
        except ConfigError as exc:
            return error(400, "invalid_task", str(exc), field=exc.key)
        except TaskError as exc:
            return error(409, "conflict", str(exc))
        except QueueFullError as exc:
            return error(429, "queue_full", str(exc), headers={"retry-after": str(exc.retry_after_s)},
                         policy={"max_pending": exc.limit, "waiting": exc.waiting})
        except BudgetError as exc:
            return error(429, "budget_exhausted", str(exc), headers={"retry-after": "60"},
                         policy={"max_usd": exc.limit})
        status = 202 if any(outcome.created) else 200
        data = render(AcceptedBatch, {"tasks": outcome.accepted})
        location = outcome.accepted[0]["links"]["self"]
        return reply(status, data if batch else data["tasks"][0], headers={"location": location})

    async def list_tasks(self, request: web.Request) -> web.Response:
        query = request.query
        state, limit, cursor = query.get("state"), query.get("limit", "100"), query.get("cursor", "0")
        if state is not None and state not in STATES:
            return error(400, "invalid_request", f"state {state!r} is not one of {', '.join(STATES)}")
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT or not cursor.isdigit():
            return error(400, "invalid_request", f"limit must be 1 to {MAX_LIMIT} and cursor a next_cursor value")
        snap = await asyncio.to_thread(snapshot, self.config)
        return reply(200, render(TaskPage, task_page(snap, state, int(cursor), int(limit))))

    async def show(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        try:
            data = await asyncio.to_thread(task_detail, self.config, task_id)
        except TaskError as exc:
            return error(404, "not_found", str(exc))
        return reply(200, render(TaskDetail, data))

    async def cancel(self, request: web.Request) -> web.Response:
        return await self._act(request, ops.cancel_task)

    async def retry(self, request: web.Request) -> web.Response:
        return await self._act(request, ops.retry_task)

    async def _act(self, request: web.Request, action: Callable[[FleetConfig, str], Any]) -> web.Response:
        task_id = request.match_info["task_id"]
        missing = await self._missing(task_id)
        if missing is not None:
            return missing
        try:
            record = await asyncio.to_thread(action, self.config, task_id)
        except TaskError as exc:
            return error(409, "conflict", str(exc))
        return reply(200, render(TaskAction, {"task_id": task_id, "state": str(record.state)}))

    async def task_events(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        missing = await self._missing(task_id, invalid_ok=False)
        if missing is not None:
            return missing
        start = _resume_id(request)
        try:
            position = TaskPosition.decode(start) if start else None
        except ValueError:
            return error(400, "invalid_request", f"Last-Event-ID {start!r} is not an id of this stream")
        if position is not None and (position.stage == "end" or self._ahead(position.feed.cursor)):
            return web.Response(status=204) if position.stage == "end" else _ahead_error()
        sse = await SSE.open(request)
        await self.streams.task(sse, task_id, position, follow=_follow(request))
        return sse.response

    async def fleet_events(self, request: web.Request) -> web.StreamResponse:
        start = _resume_id(request)
        try:
            position = decode_feed_id(start) if start else None
        except ValueError:
            return error(400, "invalid_request", f"Last-Event-ID {start!r} is not an id of this stream")
        if position is not None and self._ahead(position.cursor):
            return _ahead_error()
        sse = await SSE.open(request)
        await self.streams.fleet(sse, position, follow=_follow(request))
        return sse.response

    async def status(self, request: web.Request) -> web.Response:
        report = await asyncio.to_thread(build_status, self.config, time.time())
        return reply(200, render(StatusReport, report))

    async def login_code(self, request: web.Request) -> web.Response:
        code = self.sessions.mint_code()
        data = {"url": f"http://{request.host}/ui/login?code={code}", "code": code,
                "expires_in_s": self.sessions.code_ttl_s}
        return reply(200, render(LoginCode, data))

    async def openapi(self, request: web.Request) -> web.Response:
        from .openapi import document  # noqa: PLC0415

        return reply(200, document())

    async def _missing(self, task_id: str, *, invalid_ok: bool = True) -> web.Response | None:
        """404 for an id that names no task (an invalid task's id counts when ``invalid_ok``)."""
        taskset = await asyncio.to_thread(load_cached, self.config)
        if task_id in taskset.tasks or (invalid_ok and any(b.task_id == task_id for b in taskset.invalid)):
            return None
        return error(404, "not_found", f"no task {task_id!r}; GET {PREFIX}/tasks lists them")

    def _ahead(self, cursor: int) -> bool:
        return cursor > self.store.event_cursor()


def _resume_id(request: web.Request) -> str | None:
    return request.headers.get("last-event-id") or request.query.get("last_event_id") or None


def _follow(request: web.Request) -> bool:
    return request.query.get("follow", "true").lower() not in ("false", "0", "no")


def _ahead_error() -> web.Response:
    return error(400, "invalid_request", "Last-Event-ID is past the end of the event log; reconnect without it")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
