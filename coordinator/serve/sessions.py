"""The dashboard's sign-in: one-time login codes, and the session cookies they are traded for.

``coordinator ui`` asks the running server for a code (``POST
/v1/coordinator/login-codes`` with the fleet token) and prints
``http://127.0.0.1:<port>/ui/login?code=<code>``. The code is good once, for
``CODE_TTL_S``; visiting it sets an HttpOnly, SameSite=Strict session cookie
for ``/`` and redirects to ``/ui/``. A code is minted by the server rather than
written by the CLI into a file for the server to consume: the fleet token is
already what proves "this is the fleet's user" (the CLI reads it from
gateway.json, like every other command that talks to the gateway), codes and
sessions then live in one process's memory only (never on disk, gone with a
restart), and single use is one ``dict.pop`` on the server's loop, with no
file rename race to reason about.

Codes and sessions are kept as SHA-256 digests, so a lookup never compares the
secret itself. Both are capped (the oldest dropped) and expire by the injected
clock. The cookie's name carries the server's port: browsers do not keep
cookies apart by port, and two fleets on one machine must not sign each other
out.
"""

from __future__ import annotations

import hashlib
import secrets
from aiohttp import web

from ..clock import REAL_CLOCK, Clock
from .access import server_port

CODE_TTL_S = 60.0
SESSION_TTL_S = 12 * 3600.0
MAX_CODES = 32  # unredeemed codes kept; minting more drops the oldest
MAX_SESSIONS = 64  # signed-in browsers kept; signing in more drops the oldest
COOKIE_PREFIX = "coordinator_session_"


class Sessions:
    """One server's outstanding login codes and live sessions, by digest, with their expiry times."""

    def __init__(self, clock: Clock = REAL_CLOCK, *, code_ttl_s: float = CODE_TTL_S,
                 session_ttl_s: float = SESSION_TTL_S) -> None:
        self.clock = clock
        self.code_ttl_s = code_ttl_s
        self.session_ttl_s = session_ttl_s
        self._codes: dict[str, float] = {}
        self._sessions: dict[str, float] = {}

    def mint_code(self) -> str:
        """A new one-time login code, good for ``code_ttl_s``."""
        code = secrets.token_urlsafe(24)
        _remember(self._codes, _digest(code), self.clock.now() + self.code_ttl_s, MAX_CODES, self.clock.now())
        return code

    def redeem(self, code: str) -> str | None:
        """A new session token for ``code``, once, before it expires; None for a used, expired or unknown code."""
        expires_at = self._codes.pop(_digest(code), None)
        if expires_at is None or self.clock.now() >= expires_at:
            return None
        session = secrets.token_urlsafe(32)
        now = self.clock.now()
        _remember(self._sessions, _digest(session), now + self.session_ttl_s, MAX_SESSIONS, now)
        return session

    def is_signed_in(self, request: web.Request) -> bool:
        """Whether the request carries this server's cookie of a live session."""
        token = request.cookies.get(cookie_name(request))
        if not token:
            return False
        expires_at = self._sessions.get(_digest(token))
        return expires_at is not None and self.clock.now() < expires_at

    def set_cookie(self, response: web.StreamResponse, request: web.Request, session: str) -> None:
        """Give the browser its session: HttpOnly (no script reads it), SameSite=Strict, the whole server."""
        response.set_cookie(cookie_name(request), session, httponly=True, samesite="Strict", path="/",
                            max_age=int(self.session_ttl_s))


def cookie_name(request: web.Request) -> str:
    """The session cookie of the server this request reached (its port in the name)."""
    return f"{COOKIE_PREFIX}{server_port(request)}"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _remember(table: dict[str, float], key: str, expires_at: float, cap: int, now: float) -> None:
    """Add ``key``; drop the expired, then the oldest past ``cap`` (insertion order is expiry order)."""
    for old in [k for k, at in table.items() if at <= now]:
        del table[old]
    while len(table) >= cap:
        del table[next(iter(table))]
    table[key] = expires_at
