"""Who may call the task API, and its errors as JSON.

Every route checks, in order: the ``Host`` header names this server on loopback
(``127.0.0.1:<port>``, ``localhost:<port>`` or ``[::1]:<port>``; anything else is a
DNS-rebinding page in a browser and gets 403 ``bad_host``); a valid token (the
gateway's own check, ``Proxy.authenticate``; 401 without one); and the route's
scope: ``FLEET`` routes need the fleet token; ``OWN_TASK`` routes take the fleet
token or the token of the task they name; ``ANY`` takes any valid token. A task
token never mutates (403). Errors are ``{"error": {"type", "message", ...}}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..gateway.tokens import TokenClaims
from .models import ErrorBody, render

FLEET, OWN_TASK, ANY = "fleet", "own_task", "any"
Authenticate = Callable[[web.Request], TokenClaims | None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, kind: str, message: str, *, headers: dict[str, str] | None = None,
          **extra: Any) -> web.Response:
    """An error response in the API's one shape."""
    body = render(ErrorBody, {"error": {"type": kind, "message": message, **extra}})
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


def reply(status: int, data: Any, *, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response (``data`` already rendered through its model)."""
    return web.Response(status=status, text=json.dumps(data, default=str), content_type="application/json",
                        headers=headers)


def host_allowed(request: web.Request) -> bool:
    """Whether ``Host`` names this very server on loopback (a rebinding attack names the attacker's domain)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return False
    port = sockname[1]
    return request.headers.get("host", "").lower() in {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}


def refusal(request: web.Request, claims: TokenClaims | None, scope: str) -> web.Response | None:
    """The error for a request this scope refuses, or None when it may proceed."""
    if not host_allowed(request):
        return error(403, "bad_host", f"Host {request.headers.get('host', '')!r} is not this server; call it as "
                                      "127.0.0.1:<port>, localhost:<port> or [::1]:<port>")
    if claims is None:
        return error(401, "unauthorized", "a token is needed: Authorization: Bearer <the token in "
                                          ".coordinator/gateway.json> (or a task's own token to read that task)")
    if claims.task_id is None or scope == ANY:
        return None
    if scope == OWN_TASK and request.match_info.get("task_id") == claims.task_id:
        return None
    if scope == OWN_TASK:
        return error(403, "forbidden", f"a task token may read only its own task ({claims.task_id!r}), not "
                                       f"{request.match_info.get('task_id')!r}")
    return error(403, "forbidden", "this needs the fleet token; a task token may only read its own task")


def guarded(handler: Handler, scope: str, authenticate: Authenticate) -> Handler:
    """``handler`` behind the host, token and scope checks; aiohttp's own HTTP errors as JSON too."""
    async def handle(request: web.Request) -> web.StreamResponse:
        refused = refusal(request, authenticate(request), scope)
        if refused is not None:
            return refused
        try:
            return await handler(request)
        except web.HTTPException as exc:  # e.g. 413 from a body over the limit
            return error(exc.status, "invalid_request", exc.reason or "bad request")
    return handle
