"""Helpers for the MCP server's tests: the SDK's own clients (in memory, stdio, HTTP) and result checks."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.types import CallToolResult

from coordinator.clock import Clock, REAL_CLOCK
from coordinator.config import load_config
from coordinator.serve.mcp_server import build_server
from coordinator.serve.mcp_tools import FleetTools

Step = tuple[str, dict[str, Any]]


def fleet_tools(root: Path, *, inside_task: str | None = None, clock: Clock = REAL_CLOCK) -> FleetTools:
    """The tools of the fleet at ``root``, reading its fleet.toml on each call as the CLI wiring does."""
    return FleetTools(lambda: load_config(root), inside_task=inside_task, clock=clock)


def with_client(target: Any, use: Callable[[Client], Awaitable[Any]]) -> Any:
    """Run ``use(client)`` with an SDK client connected to ``target``: FleetTools (in memory), or a Transport."""
    if isinstance(target, FleetTools):
        target = build_server(target)

    async def main() -> Any:
        # "legacy": the initialize handshake over JSON-RPC streams, as Claude Code speaks it.
        async with Client(target, mode="legacy", read_timeout_seconds=60) as client:
            return await use(client)
    return anyio.run(main)


def call(target: Any, *steps: Step) -> list[CallToolResult]:
    """Call each ``(tool, arguments)`` in order, in one session."""
    async def use(client: Client) -> list[CallToolResult]:
        return [await client.call_tool(name, arguments) for name, arguments in steps]
    return with_client(target, use)


def data(result: CallToolResult) -> dict[str, Any]:
    """A successful result's structured content (which its text content repeats as JSON)."""
    assert not result.is_error, result.content[0].text
    assert isinstance(result.structured_content, dict)
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


def error(result: CallToolResult) -> str:
    """A tool error's one line of text."""
    assert result.is_error, result.structured_content
    text = result.content[0].text
    assert "\n" not in text and "Traceback" not in text, text
    return text
