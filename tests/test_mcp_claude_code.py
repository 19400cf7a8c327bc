"""Real Claude Code as the MCP client: `claude -p --mcp-config` enqueues through `coordinator mcp`, a fleet runs it.

The "model" is a scripted fake Anthropic upstream (a real local server): for the
main conversation, which offers the coordinator's tools, its first answer is one
``tool_use`` of ``mcp__coordinator__enqueue``; once it sees the tool's result, a
final text. Claude Code's other calls (titles, quota checks) get the default answer.
Claude Code itself starts ``coordinator mcp -C ROOT`` over stdio from the MCP config,
lists its tools and calls enqueue. Offline; skipped without the binary locally,
required in CI (``COORDINATOR_REQUIRE_CLAUDE``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.api_support import write_echo_fleet
from tests.conftest import PYTHON, subprocess_env
from tests.fake_upstream import Call, FakeUpstream
from tests.procs import record, run_cli
from tests.test_claude_code import claude  # noqa: F401  (fixture: the binary, or skip / fail)
from tests.test_claude_code_worktrees import last_user_content

TOOL = "mcp__coordinator__enqueue"
TASK = {"id": "from-claude", "prompt": "Summarise what a fleet coordinator does in one sentence.",
        "priority": "high"}


def enqueue_then_answer(call: Call) -> dict[str, Any] | None:
    """The main conversation: one enqueue call, then a final answer; None (the default answer) for the rest."""
    body = call.json if isinstance(call.json, dict) else {}
    if not any(tool.get("name") == TOOL for tool in body.get("tools") or []):
        return None
    if any(block.get("type") == "tool_result" for block in last_user_content(body)):
        return {"content": [{"type": "text", "text": "Queued it for the fleet."}], "stop_reason": "end_turn"}
    use = {"type": "tool_use", "id": "toolu_enqueue_1", "name": TOOL, "input": {"tasks": [TASK]}}
    return {"content": [use], "stop_reason": "tool_use"}


def test_claude_code_enqueues_through_the_mcp_server_and_the_fleet_runs_the_task(
        tmp_path: Path, fake_upstream: FakeUpstream, claude: str) -> None:  # noqa: F811  (the fixture)
    root = write_echo_fleet(tmp_path / "fleet")
    fake_upstream.responder = enqueue_then_answer
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"coordinator": {
        "type": "stdio", "command": PYTHON, "args": ["-m", "coordinator", "mcp", "-C", str(root)]}}}))
    home = tmp_path / "home"
    home.mkdir()
    # MCP_CONNECTION_NONBLOCKING=0: `claude -p` waits (up to MCP_CONNECT_TIMEOUT_MS) for its MCP servers before
    # the first request, instead of sending it while `coordinator mcp` is still starting.
    env = subprocess_env(ANTHROPIC_BASE_URL=fake_upstream.url, ANTHROPIC_API_KEY="sk-ant-fake-upstream-key",
                         HOME=str(home), CLAUDE_CONFIG_DIR=str(home / ".claude"), DISABLE_AUTOUPDATER="1",
                         DISABLE_TELEMETRY="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
                         MCP_CONNECTION_NONBLOCKING="0", MCP_CONNECT_TIMEOUT_MS="60000")
    result = subprocess.run([claude, "-p", "Queue a one-sentence summary task for the fleet.", "--mcp-config",
                             str(config), "--strict-mcp-config", "--allowedTools", "mcp__coordinator__*",
                             "--output-format", "json"], capture_output=True, text=True, timeout=180, env=env,
                            cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    reply = json.loads(result.stdout)
    assert reply["is_error"] is False and reply["result"] == "Queued it for the fleet."
    results = [block for c in fake_upstream.calls if isinstance(c.json, dict)
               for block in last_user_content(c.json) if block.get("type") == "tool_result"]
    assert len(results) == 1 and not results[0].get("is_error"), results
    content = results[0]["content"]  # what Claude Code passed back to the model: the tool's JSON
    text = content if isinstance(content, str) else "".join(b.get("text", "") for b in content)
    assert json.loads(text) == {"tasks": [{"task_id": "from-claude", "state": "pending", "queue_position": 1,
                                           "created": True}]}
    task_file = root / "tasks" / "from-claude.toml"
    assert task_file.is_file() and 'priority = "high"' in task_file.read_text()
    run = run_cli(root, "run", "-n", "1", "--until-empty", "--no-dashboard", timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert record(root, "from-claude")["state"] == "done"
