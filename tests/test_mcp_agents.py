"""Fleet agents never inherit `coordinator mcp`: Claude Code agents get --strict-mcp-config unless opted out."""

from __future__ import annotations

import json
from pathlib import Path

from tests.procs import record, run_cli

# Stands in for Claude Code: records its argv, one JSON line per run (real processes, run by a real fleet).
FAKE_CLAUDE = """#!/bin/sh
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "{log}"
"""


def test_claude_agents_get_strict_mcp_config_unless_their_config_opts_out(make_fleet, tmp_path: Path) -> None:
    log = tmp_path / "argv.jsonl"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    claude, other = bin_dir / "claude", bin_dir / "agent-cli"  # the same script: only the name differs
    for program in (claude, other):
        program.write_text(FAKE_CLAUDE.format(log=log))
        program.chmod(0o755)
    root = make_fleet(f"""
        [fleet]
        default_agent = "strict"
        heartbeat_s = 0.3
        [agents.strict]
        kind = "command"
        command = ["{claude}", "-p", "{{task_id}}"]
        [agents.open]
        kind = "command"
        strict_mcp_config = false
        command = ["{claude}", "-p", "{{task_id}}"]
        [agents.given]
        kind = "command"
        command = ["{claude}", "-p", "{{task_id}}", "--strict-mcp-config", "--mcp-config", "own.json"]
        [agents.other]
        kind = "command"
        command = ["{other}", "-p", "{{task_id}}"]
    """, {"strict.toml": 'prompt = "s"\n', "open.toml": 'prompt = "o"\nagent = "open"\n',
          "given.toml": 'prompt = "g"\nagent = "given"\n', "other.toml": 'prompt = "x"\nagent = "other"\n'})
    result = run_cli(root, "run", "-n", "2", "--until-empty", "--no-dashboard")
    assert result.returncode == 0, result.stdout + result.stderr
    argvs = {argv[1]: argv for argv in map(json.loads, log.read_text().splitlines())}
    assert argvs["strict"] == ["-p", "strict", "--strict-mcp-config"]
    assert argvs["open"] == ["-p", "open"]
    assert argvs["given"] == ["-p", "given", "--strict-mcp-config", "--mcp-config", "own.json"]  # not twice
    assert argvs["other"] == ["-p", "other"]  # not Claude Code: its argv is its own
    assert all(record(root, task)["state"] == "done" for task in argvs)


def test_strict_mcp_config_must_be_a_boolean(make_fleet) -> None:
    root = make_fleet("""
        [agents.claude]
        kind = "command"
        command = ["claude", "-p", "{prompt}"]
        strict_mcp_config = "sometimes"
    """)
    result = run_cli(root, "validate")
    assert result.returncode == 2
    assert "agents.claude.strict_mcp_config" in result.stderr + result.stdout
