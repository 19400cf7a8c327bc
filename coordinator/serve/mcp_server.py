"""``coordinator mcp``: the fleet's tools (``mcp_tools.py``) served over MCP with the official SDK (DESIGN §11).

Each tool answers an object, checked against its model here and published as the
tool's output schema, so clients get ``structuredContent`` (and the same JSON as
text). A user error (``CoordinatorError``) is a tool error (``isError``) carrying the
one-line message the CLI prints; anything else is the SDK's generic tool error, its
traceback logged to stderr only (stdout is the stdio transport).

Transports: stdio (what ``claude mcp add`` runs), or streamable HTTP on 127.0.0.1
(``--http PORT``) behind a bearer token: the server's own, written with its URL to
``.coordinator/mcp.json`` (mode 0600, as ``gateway.json``), or the running gateway's
fleet token. The SDK's Host and Origin checks against DNS rebinding stay on.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import json
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from ..atomic import PRIVATE_DIR, PRIVATE_FILE, read_json, write_json_atomic
from ..config import FleetConfig
from ..errors import ConfigError, CoordinatorError
from ..gateway.client import read_gateway
from .mcp_tools import FleetTools
from .models import StateName, StatusReport, TaskAction, TaskDetail, TaskPage, render

log = logging.getLogger("coordinator.mcp")
MCP_FILE = "mcp.json"  # {"url", "pid", "token"} of a running `coordinator mcp --http` (mode 0600)
INSTRUCTIONS = """\
Feed and watch a coordinator fleet: a queue of tasks that LLM agents claim and run.
enqueue adds tasks (each an object of task-file keys; `prompt` is required), then
wait_task (at most 25 s a call; call again while it is not finished), read_output (the
run's log, from next_offset) and get_task follow them. fleet_status and list_tasks show
the whole queue; cancel_task and retry_task act on one task. infer sends one prompt
through the fleet's gateway; configure changes backends, models, routing and limits.
Files are the truth: everything but infer works with or without a running fleet."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnqueuedTask(_Out):
    """One task the queue holds after ``enqueue``."""

    task_id: str
    state: StateName
    queue_position: int | None = Field(description="1 = claimed next; null when it is not pending")
    created: bool = Field(description="false: an identical task with this id was there already")


class Enqueued(_Out):
    """Each task of an ``enqueue``, in order."""

    tasks: list[EnqueuedTask]


class Waited(_Out):
    """A task after ``wait_task``."""

    task_id: str
    state: StateName
    finished: bool = Field(description="done, failed or cancelled; false: call again (or, blocked or invalid, "
                                       "fix what reason says)")
    reason: str | None = Field(description="why it is blocked or invalid, or its last error")
    attempts: int
    max_attempts: int


class Output(_Out):
    """A slice of a run's log."""

    task_id: str
    run: int | None = Field(description="the run folder (the claim's epoch); null before the first run")
    stream: str
    text: str
    next_offset: int = Field(description="pass as offset to read on")
    eof: bool = Field(description="this run is over and read to its end")


class Inference(_Out):
    """One answer through the gateway."""

    text: str
    model: str | None
    stop_reason: str | None
    usage: dict[str, Any]
    dedup: str | None = Field(description="how the gateway served it: miss (an upstream call), joined, hit")


class Reload(_Out):
    """What the running gateway did with the new fleet.toml."""

    status: str = Field(description="reloaded, on_disk (it reads the file itself), no_gateway, unchanged, "
                                    "unreachable, refused")
    message: str
    generation: int | None = Field(None, description="reloaded: the configuration's generation now")
    changed: list[str] = Field([], description="reloaded: what changed (backends.NAME, models, routing, ...)")
    restart_needed: list[str] = Field([], description="reloaded: keys that wait for a gateway restart")


class Configured(_Out):
    """fleet.toml after ``configure``."""

    path: str
    keys: list[str] = Field(description="the keys the fragment set or removed")
    written: bool
    reload: Reload


READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
# (tool, output model, annotations): the one table of what the server offers.
TOOLS: tuple[tuple[str, type[BaseModel], ToolAnnotations], ...] = (
    ("enqueue", Enqueued, WRITE),
    ("fleet_status", StatusReport, READ),
    ("list_tasks", TaskPage, READ),
    ("get_task", TaskDetail, READ),
    ("wait_task", Waited, READ),
    ("read_output", Output, READ),
    ("cancel_task", TaskAction, ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                                                open_world_hint=False)),
    ("retry_task", TaskAction, WRITE),
    ("infer", Inference, ToolAnnotations(read_only_hint=True, open_world_hint=True)),
    ("configure", Configured, ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)),
)


def build_server(tools: FleetTools) -> MCPServer:
    """An MCP server offering every tool of ``TOOLS``."""
    try:
        release = version("coordinator")
    except PackageNotFoundError:
        release = "dev"
    server: MCPServer = MCPServer("coordinator", version=release, instructions=INSTRUCTIONS, log_level="WARNING")
    for name, model, annotations in TOOLS:
        server.add_tool(as_tool(getattr(tools, name), model), name=name, annotations=annotations)
    return server


def as_tool(method: Callable[..., Any], model: type[BaseModel]) -> Callable[..., CallToolResult]:
    """``method`` as an SDK tool: its parameters as they are, its data rendered through ``model``.

    The SDK reads a tool's schemas from its signature, so the wrapper carries the
    method's own parameters and declares ``Annotated[CallToolResult, model]``: the
    output schema is the model's, and a user error can be answered as a tool error
    with the CLI's message exactly (a raised ``ToolError`` would get a prefix).
    """
    def call(**arguments: Any) -> CallToolResult:
        try:
            data = render(model, method(**arguments))
        except CoordinatorError as exc:
            log.info("%s refused: %s", method.__name__, exc)
            return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
        text = json.dumps(data, ensure_ascii=False, default=str)
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)

    signature = inspect.signature(method, eval_str=True)
    call.__signature__ = signature.replace(return_annotation=Annotated[CallToolResult, model])  # type: ignore[attr-defined]
    call.__name__, call.__doc__ = method.__name__, method.__doc__
    return call


def log_to_stderr(verbose: bool = False) -> None:
    """Every log line on stderr (stdout is the stdio transport), before the SDK would install its own handler."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if verbose else logging.WARNING,
                        format="coordinator mcp: %(levelname)s %(name)s: %(message)s", force=True)


def serve_stdio(server: MCPServer) -> None:
    """Serve on stdin/stdout until the client closes them."""
    server.run("stdio")


def serve_http(server: MCPServer, config: FleetConfig, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve streamable HTTP at ``http://127.0.0.1:PORT/mcp`` until Ctrl-C; ``mcp.json`` names it while it runs."""
    import anyio  # noqa: PLC0415
    import uvicorn  # noqa: PLC0415

    token = "cgm-" + secrets.token_urlsafe(32)
    sock = listen(port)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    app = BearerGuard(server.streamable_http_app(host="127.0.0.1"), lambda: accepted_tokens(config, token))

    class Uvicorn(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            """uvicorn's, without raising the signal again once stopped: SIGTERM ends this cleanly (exit 0)."""
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    # log_config None: uvicorn's lines go through the root logger, to stderr (its own config sends some to stdout).
    uv = Uvicorn(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))
    path = config.state_dir / MCP_FILE
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    write_json_atomic(path, {"url": url, "pid": os.getpid(), "token": token}, mode=PRIVATE_FILE)
    on_ready(url)
    try:
        anyio.run(lambda: uv.serve(sockets=[sock]))
    finally:
        if (read_json(path) or {}).get("token") == token:
            path.unlink(missing_ok=True)


def listen(port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:``port`` (0: a free one); ``ConfigError`` when it cannot be had.

    It listens before ``mcp.json`` names it, so a client that reads the file at once
    is queued by the kernel until uvicorn's loop accepts it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); pick another port, or 0 for any "
                          "free one", key="--http") from exc
    return sock


def accepted_tokens(config: FleetConfig, own: str) -> list[str]:
    """The server's own token, and the fleet token of the running gateway (which may do everything anyway)."""
    gateway = read_gateway(config)
    return [own] if gateway is None else [own, gateway.token]


class BearerGuard:
    """An ASGI wrapper answering 401 to any HTTP request without an accepted ``Authorization: Bearer`` token."""

    def __init__(self, app: Any, tokens: Callable[[], list[str]]) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            body = json.dumps({"error": {"type": "unauthorized", "message": "a token is needed: Authorization: "
                                         f"Bearer <the token in .coordinator/{MCP_FILE}, or the fleet token>"}})
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": body.encode()})
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: dict[str, Any]) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return False
        return any(hmac.compare_digest(given.strip().encode(), token.encode()) for token in self.tokens())
