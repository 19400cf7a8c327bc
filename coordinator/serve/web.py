"""The web dashboard at ``/ui/`` (DESIGN §11): server-rendered views over ``report/``, signed in by cookie.

Views: the overview (``/ui/``), the task list (``/ui/tasks?state=&q=``) and a task
(``/ui/tasks/<id>``). Each is built from the same read models as ``status``,
``tasks`` and ``show`` on a worker thread, and rendered by ``pages.py``. A request
with the ``x-coordinator-fragment`` header gets only the live part of its view:
``static/dashboard.js`` fetches it again whenever the fleet's event stream says
something happened (and every few seconds, since a dropped task file makes no
event), and swaps it in. The page's Cancel and Retry buttons call the task API
itself (``POST /v1/coordinator/tasks/<id>/cancel``), which takes the session
cookie and checks the request's Origin (``access.py``).

Every view and the login link check the Host header first (DNS rebinding, as the
API does); every view needs the session cookie, and without it gets 401 and a
page saying how to sign in, never fleet data. The script and style sheet are
package data, served to anyone on loopback: they hold no data.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from ..errors import TaskError
from ..report.rows import snapshot, task_detail
from ..report.status import build_status
from . import pages
from .access import host_allowed
from .api import TaskApi

FRAGMENT_HEADER = "x-coordinator-fragment"
STATIC_TYPES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


@dataclass
class View:
    """A rendered view: its live part, what stays put around it, and its status."""

    title: str
    name: str
    live: pages.Html
    before: pages.Html = pages.EMPTY
    after: pages.Html = pages.EMPTY
    status: int = 200


Render = Callable[[web.Request], Awaitable[View]]


class Dashboard:
    """The ``/ui/`` routes of one server, over its task API's config and sessions."""

    def __init__(self, api: TaskApi) -> None:
        self.config = api.config
        self.sessions = api.sessions

    def mount(self, app: web.Application) -> None:
        """Add the dashboard's routes to ``app``."""
        app.router.add_get("/ui", self.home)
        app.router.add_get("/ui/login", self.login)
        app.router.add_get("/ui/static/{name}", self.static)
        app.router.add_get("/ui/", self._view(self.overview))
        app.router.add_get("/ui/tasks", self._view(self.tasks))
        app.router.add_get("/ui/tasks/{task_id}", self._view(self.task))

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Trade a one-time code for a session cookie, then go to the overview."""
        if not host_allowed(request):
            return _bad_host(request)
        session = self.sessions.redeem(request.query.get("code", ""))
        if session is None:
            return _signed_out("That login link has been used already or has expired.")
        response = web.Response(status=303, headers={**HEADERS, "location": "/ui/", "referrer-policy": "no-referrer"})
        self.sessions.set_cookie(response, request, session)
        return response

    async def static(self, request: web.Request) -> web.StreamResponse:
        if not host_allowed(request):
            return _bad_host(request)
        name = request.match_info["name"]
        body = _asset(name) if name in STATIC_TYPES else None
        if body is None:
            return web.Response(status=404, text="not found", headers=HEADERS)
        return web.Response(body=body, content_type=STATIC_TYPES[name], charset="utf-8",
                            headers={**HEADERS, "cache-control": "no-cache"})

    async def overview(self, request: web.Request) -> View:
        report = await asyncio.to_thread(build_status, self.config, time.time())
        return View("Overview", "overview", pages.overview(report), after=pages.overview_events())

    async def tasks(self, request: web.Request) -> View:
        state = request.query.get("state") or None
        text = request.query.get("q", "")
        snap = await asyncio.to_thread(snapshot, self.config)
        rows = [row for row in snap.rows if (state is None or row.state == state) and pages.matches(row, text)]
        return View("Tasks", "tasks", pages.task_list(rows, len(snap.rows)), before=pages.filters(state, text))

    async def task(self, request: web.Request) -> View:
        task_id = request.match_info["task_id"]
        try:
            data = await asyncio.to_thread(task_detail, self.config, task_id)
        except TaskError as exc:
            live = pages.fill('<section class="card"><h1>No such task</h1><p>{m}</p>'
                              '<p><a href="/ui/tasks">All tasks</a></p></section>', m=str(exc))
            return View("No such task", "task", live, status=404)
        after = pages.task_log(task_id) if data.get("runs_dir") else pages.EMPTY
        return View(task_id, "task", pages.task_detail(data), after=after)

    def _view(self, render: Render) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``render`` behind the Host and session checks; the whole page, or its live part when asked."""
        async def handle(request: web.Request) -> web.StreamResponse:
            if not host_allowed(request):
                return _bad_host(request)
            if not self.sessions.is_signed_in(request):
                return _signed_out("This browser is not signed in to the dashboard (or its session ended).")
            view = await render(request)
            if request.headers.get(FRAGMENT_HEADER):
                text = str(view.live)
            else:
                text = pages.layout(view.title, view.name, view.live, before=view.before, after=view.after,
                                    root=str(self.config.root))
            return web.Response(status=view.status, text=text, content_type="text/html", charset="utf-8",
                                headers={**HEADERS, "vary": FRAGMENT_HEADER})
        return handle


@functools.cache
def _asset(name: str) -> bytes | None:
    """A file of ``static/`` (package data), read once; None if the install lacks it."""
    try:
        return resources.files(__package__).joinpath("static", name).read_bytes()
    except OSError:
        return None


def _signed_out(reason: str) -> web.Response:
    return web.Response(status=401, text=pages.login_help(reason), content_type="text/html", charset="utf-8",
                        headers=HEADERS)


def _bad_host(request: web.Request) -> web.Response:
    return web.Response(status=403, text=f"Host {request.headers.get('host', '')!r} is not this server; open the "
                                         "dashboard at the 127.0.0.1 address `coordinator ui` prints.",
                        headers=HEADERS)


def mount_dashboard(app: web.Application, api: TaskApi) -> Dashboard:
    """Serve the dashboard under ``/ui/`` on ``app``, beside ``api``."""
    dashboard = Dashboard(api)
    dashboard.mount(app)
    return dashboard
