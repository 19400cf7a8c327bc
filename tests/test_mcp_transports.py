"""`coordinator mcp` as a real process: stdio through the SDK's stdio client, and --http behind its token."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import httpx2
from mcp import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.api_support import wait_until, write_echo_fleet
from tests.conftest import PYTHON, coordinator_argv, subprocess_env
from tests.mcp_support import call, data, error, with_client
from tests.procs import run_cli, stop


def stdio(root: Path, errlog: Any, **env: str) -> StdioServerParameters:
    return StdioServerParameters(command=PYTHON, args=["-m", "coordinator", "mcp", "-C", str(root)],
                                 env=subprocess_env(**env))


def test_stdio_lists_tools_enqueues_and_shows_a_task(tmp_path: Path) -> None:
    root = write_echo_fleet(tmp_path / "fleet")
    with open(tmp_path / "stderr.log", "w") as errlog:
        async def use(client: Any) -> Any:
            tools = await client.list_tools()
            added = await client.call_tool("enqueue", {"tasks": [{"id": "over-stdio", "prompt": "Hello there"}]})
            shown = await client.call_tool("get_task", {"task_id": "over-stdio"})
            missing = await client.call_tool("get_task", {"task_id": "nope"})
            return tools, added, shown, missing
        from mcp.client.stdio import stdio_client

        tools, added, shown, missing = with_client(stdio_client(stdio(root, errlog), errlog=errlog), use)
    assert "enqueue" in {tool.name for tool in tools.tools} and len(tools.tools) == 10
    assert data(added)["tasks"] == [{"task_id": "over-stdio", "state": "pending", "queue_position": 1,
                                     "created": True}]
    assert data(shown)["task"]["prompt"] == "Hello there" and data(shown)["state"] == "pending"
    assert error(missing) == "no task 'nope'; `coordinator tasks` lists them"
    assert (root / "tasks" / "over-stdio.toml").is_file()


def test_a_server_started_inside_a_fleet_task_refuses_to_enqueue(tmp_path: Path) -> None:
    root = write_echo_fleet(tmp_path / "fleet")
    from mcp.client.stdio import stdio_client

    with open(tmp_path / "stderr.log", "w") as errlog:
        transport = stdio_client(stdio(root, errlog, COORDINATOR_TASK_ID="parent-task"), errlog=errlog)
        refused, status = call(transport, ("enqueue", {"tasks": [{"id": "child", "prompt": "more work"}]}),
                               ("fleet_status", {}))
    assert "agents cannot enqueue into their own fleet" in error(refused) and "'parent-task'" in error(refused)
    assert data(status)["tasks"]["pending"] == 0, "reading is fine"
    assert list((root / "tasks").iterdir()) == []


def test_http_needs_the_token_and_serves_the_tools_with_it(tmp_path: Path) -> None:
    root = write_echo_fleet(tmp_path / "fleet")
    out, log = open(tmp_path / "mcp.stdout", "wb"), open(tmp_path / "mcp.stderr", "wb")  # noqa: SIM115
    proc = subprocess.Popen(coordinator_argv("-C", str(root), "mcp", "--http", "0"), stdout=out, stderr=log,
                            stdin=subprocess.DEVNULL, env=subprocess_env(), start_new_session=True)
    info_path = root / ".coordinator" / "mcp.json"
    try:
        info = wait_until(lambda: info_path.exists() and json.loads(info_path.read_text()), what="mcp.json")
        assert info_path.stat().st_mode & 0o777 == 0o600 and info["url"].startswith("http://127.0.0.1:")
        request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers = {"accept": "application/json, text/event-stream"}
        for auth in ({}, {"authorization": "Bearer cgm-not-it"}, {"authorization": info["token"]}):
            refused = httpx.post(info["url"], json=request, headers={**headers, **auth}, timeout=10)
            assert refused.status_code == 401 and refused.json()["error"]["type"] == "unauthorized"
        client = httpx2.AsyncClient(headers={"authorization": f"Bearer {info['token']}"}, timeout=30)
        listed = with_client(streamable_http_client(info["url"], http_client=client), lambda c: c.list_tools())
        assert len(listed.tools) == 10
        added, = call(streamable_http_client(info["url"], http_client=httpx2.AsyncClient(
            headers={"authorization": f"Bearer {info['token']}"}, timeout=30)),
            ("enqueue", {"tasks": [{"id": "over-http", "prompt": "hi"}]}))
        assert data(added)["tasks"][0]["created"] and (root / "tasks" / "over-http.toml").is_file()
        foreign = httpx.post(info["url"], json=request, timeout=10, headers={
            **headers, "authorization": f"Bearer {info['token']}", "host": "evil.example"})
        assert foreign.status_code in (400, 403, 421), "DNS rebinding: a foreign Host is refused"
    finally:
        stop(proc, signal.SIGTERM)
        out.close()
        log.close()
    assert proc.returncode == 0 and not info_path.exists(), (tmp_path / "mcp.stderr").read_text()
    assert (tmp_path / "mcp.stdout").read_text() == "", "every log line goes to stderr"
    assert "Invalid Host header: evil.example" in (tmp_path / "mcp.stderr").read_text()


def test_http_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    root = write_echo_fleet(tmp_path / "fleet")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(root, "mcp", "--http", str(port))
    assert result.returncode == 2 and result.stderr == (
        f"error: --http: cannot listen on 127.0.0.1:{port} (Address already in use); pick another "
        "port, or 0 for any free one\n")


def test_without_the_mcp_extra_the_command_says_how_to_install_it(tmp_path: Path) -> None:
    root = write_echo_fleet(tmp_path / "fleet")
    # None in sys.modules makes `import mcp` fail as it does when the package is not installed.
    code = ("import sys; sys.modules['mcp'] = None; sys.argv = ['coordinator', '-C', sys.argv[1], 'mcp']; "
            "from coordinator.cli import main; main()")
    result = subprocess.run([PYTHON, "-c", code, str(root)], capture_output=True, text=True, timeout=60,
                            env=subprocess_env(), stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("error: the MCP server needs the mcp extra; Run pip install 'coordinator[mcp]'\n")
    assert "mcp" in run_cli(root, "--help").stdout
