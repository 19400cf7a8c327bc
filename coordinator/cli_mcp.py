"""``coordinator mcp``: the MCP server a lead agent (Claude Code) feeds and watches the fleet through.

Registered on the one Typer app of ``cli.py`` (which imports this module). The
``mcp`` SDK is an extra, imported only when the command runs, so the base install
works without it and says how to add it.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from .cli import RootOpt, _ctx, app
from .errors import ConfigError

TASK_ENV = "COORDINATOR_TASK_ID"  # set by the command runner for every fleet agent


@app.command()
def mcp(ctx: typer.Context, http: Annotated[int | None, typer.Option(
        "--http", metavar="PORT", min=0, max=65535, help="Serve streamable HTTP on 127.0.0.1:PORT (0 = any free "
        "port) instead of stdio; clients send the token in .coordinator/mcp.json as a Bearer.")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", help="Log each refused tool call to stderr.")] = False,
        root: RootOpt = None) -> None:
    """Serve the fleet's MCP tools (enqueue, fleet_status, wait_task, read_output, ...) on stdio or --http."""
    try:
        from .serve import mcp_server  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("mcp", "mcp_types"):
            raise
        raise ConfigError("the MCP server needs the mcp extra; Run pip install 'coordinator[mcp]'") from exc
    from .serve.mcp_tools import FleetTools  # noqa: PLC0415

    context = _ctx(ctx, root)
    config = context.config()  # a bad fleet.toml is one line here, before any client connects
    mcp_server.log_to_stderr(verbose)
    server = mcp_server.build_server(FleetTools(context.config, inside_task=os.environ.get(TASK_ENV)))
    if http is None:
        mcp_server.serve_stdio(server)
        return
    mcp_server.serve_http(server, config, http, on_ready=lambda url: typer.echo(
        f"MCP server on {url} (its token in {config.state_dir / mcp_server.MCP_FILE})", err=True))
