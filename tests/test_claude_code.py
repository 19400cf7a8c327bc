"""Real Claude Code (`claude -p`) as a command agent, through the gateway, offline on echo.

Claude Code installs from the npm registry (`.ci/run` does it) and talks to
whatever ANTHROPIC_BASE_URL says, so this runs the real agent CLI end to end:
~20 KB request bodies with tools, system blocks carrying their own
cache_control, `?beta=true`, `anthropic-beta` headers and per-session metadata.
Without the binary the test is skipped locally and fails in CI.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.procs import record, run_cli
from tests.conftest import subprocess_env

REPO = Path(__file__).resolve().parent.parent


def claude_binary() -> str | None:
    """$CLAUDE_BIN, the copy .ci/run installs, or `claude` on PATH."""
    candidates = [os.environ.get("CLAUDE_BIN"), str(REPO / ".ci" / "node" / "node_modules" / ".bin" / "claude"),
                  shutil.which("claude")]
    return next((c for c in candidates if c and Path(c).exists()), None)


@pytest.fixture
def claude() -> str:
    binary = claude_binary()
    if binary is None:
        if os.environ.get("COORDINATOR_REQUIRE_CLAUDE"):
            pytest.fail("Claude Code is required here but not installed (npm install @anthropic-ai/claude-code)")
        pytest.skip("Claude Code is not installed; .ci/run installs it from the npm registry")
    return binary


def test_claude_code_runs_through_the_gateway_and_identical_runs_collapse(make_fleet, claude: str) -> None:
    root = make_fleet(f"""
        [fleet]
        default_agent = "claude"

        [backends.default]
        kind = "echo"
        latency_ms = 5

        [agents.claude]
        kind = "command"
        command = ["{claude}", "-p", "{{prompt}}", "--output-format", "json"]
        timeout_s = 120
        env = {{ CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1", DISABLE_AUTOUPDATER = "1" }}
    """, {"hello.toml": 'prompt = "Say hello in five words."\n',
          "hello-again.toml": 'prompt = "Say hello in five words."\n'})
    env = subprocess_env(ANTHROPIC_API_KEY="sk-ant-must-stay-with-the-gateway", HOME=str(root / "home"))
    result = run_cli(root, "run", "-n", "1", "--until-empty", "--no-dashboard", timeout=240, env=env)
    assert result.returncode == 0, result.stdout
    for task in ("hello", "hello-again"):
        rec = record(root, task)
        assert rec["state"] == "done" and rec["usage"]["requests"] >= 1, rec
        reply = json.loads((root / ".coordinator" / "runs" / task / "1" / "stdout.log").read_text())
        assert reply["type"] == "result" and reply["is_error"] is False and reply["result"].startswith("echo:")
    stats = json.loads((root / ".coordinator" / "gateway-stats.json").read_text())
    # Two runs of one prompt differ only in metadata.user_id: the second is served without an upstream call.
    assert stats["requests"] >= 2 and stats["upstream_calls"] < stats["requests"]
    assert set(stats["tasks"]) >= {"hello", "hello-again"}
    leaked = [p for p in (root / ".coordinator").rglob("*") if p.is_file()
              and b"sk-ant-must-stay-with-the-gateway" in p.read_bytes()]
    assert leaked == []
