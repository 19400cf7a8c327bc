"""Who may call the task API, and its errors as JSON.

Every route checks, in order: the ``Host`` header names this server on loopback
(``127.0.0.1:<port>``, ``localhost:<port>`` or ``[::1]:<port>``; anything else is a
DNS-rebinding page in a browser and gets 403 ``bad_host``); a valid token (the
gateway's own check, ``Proxy.authenticate``; 401 without one); and the route's
scope: ``FLEET`` routes need the fleet token; ``OWN_TASK`` routes take the fleet
token or the token of the task they name; ``ANY`` takes any valid token. A task
token never mutates (403). A signed-in dashboard's cookie (``sessions.py``) counts
as the fleet token, and a mutation (POST) must then show, in ``Origin`` (else
``Referer``), that it comes from a page of this very server (403 ``bad_origin``);
a mutation that names a foreign origin is refused whatever authenticates it.
Errors are ``{"error": {"type", "message", ...}}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..gateway.tokens import FLEET_CLAIMS, TokenClaims
from .models import ErrorBody, render

FLEET, OWN_TASK, ANY = "fleet", "own_task", "any"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
Authenticate = Callable[[web.Request], TokenClaims | None]
SignedIn = Callable[[web.Request], bool]
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


def server_port(request: web.Request) -> int | None:
    """The port this request reached (None once the connection is gone)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return sockname[1] if sockname else None


def host_allowed(request: web.Request) -> bool:
    """Whether ``Host`` names this very server on loopback (a rebinding attack names the attacker's domain)."""
    port = server_port(request)
    if port is None:
        return False
    return request.headers.get("host", "").lower() in {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}


def origin_allowed(request: web.Request, *, by_cookie: bool) -> bool:
    """Whether a mutation comes from this server's own pages (call after ``host_allowed``).

    ``Origin``, else ``Referer``, must be ``http://<the Host header>``. With neither,
    only a token-authenticated client (curl, an SDK) may go on: a browser sends
    one of them with every POST, so a cookie-borne request without either is refused.
    """
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return not by_cookie
    parts = urlsplit(source)
    return parts.scheme == "http" and parts.netloc.lower() == request.headers.get("host", "").lower()


def refusal(request: web.Request, claims: TokenClaims | None, scope: str, *,
            by_cookie: bool = False) -> web.Response | None:
    """The error for a request this scope refuses, or None when it may proceed."""
    if not host_allowed(request):
        return error(403, "bad_host", f"Host {request.headers.get('host', '')!r} is not this server; call it as "
                                      "127.0.0.1:<port>, localhost:<port> or [::1]:<port>")
    if claims is None:
        return error(401, "unauthorized", "a token is needed: Authorization: Bearer <the token in "
                                          ".coordinator/gateway.json> (or a task's own token to read that task)")
    if request.method not in SAFE_METHODS and not origin_allowed(request, by_cookie=by_cookie):
        source = request.headers.get("origin") or request.headers.get("referer")
        return error(403, "bad_origin", f"a change must come from a page of this server (http://"
                                        f"{request.headers.get('host', '')}), not "
                                        f"{f'from {source!r}' if source else 'without Origin or Referer'}")
    if claims.task_id is None or scope == ANY:
        return None
    if scope == OWN_TASK and request.match_info.get("task_id") == claims.task_id:
        return None
    if scope == OWN_TASK:
        return error(403, "forbidden", f"a task token may read only its own task ({claims.task_id!r}), not "
                                       f"{request.match_info.get('task_id')!r}")
    return error(403, "forbidden", "this needs the fleet token; a task token may only read its own task")


def guarded(handler: Handler, scope: str, authenticate: Authenticate, signed_in: SignedIn | None = None) -> Handler:
    """``handler`` behind the host, token (or dashboard session) and scope checks; aiohttp's HTTP errors as JSON."""
    async def handle(request: web.Request) -> web.StreamResponse:
        claims = authenticate(request)
        by_cookie = claims is None and signed_in is not None and signed_in(request)
        refused = refusal(request, FLEET_CLAIMS if by_cookie else claims, scope, by_cookie=by_cookie)
        if refused is not None:
            return refused
        try:
            return await handler(request)
        except web.HTTPException as exc:  # e.g. 413 from a body over the limit
            return error(exc.status, "invalid_request", exc.reason or "bad request")
    return handle
