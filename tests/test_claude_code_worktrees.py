"""Real Claude Code (`claude -p`) agents in worktrees: each writes its file with the Write tool, and it lands.

The fake upstream answers like a model that edits: for a prompt naming a file it
returns one ``tool_use`` of Claude Code's Write tool (the path taken from the
prompt, under the working directory Claude Code reports), and once it sees the
tool's result, a final answer. Claude Code itself writes the file in its
worktree; the coordinator commits it and lands it on ``main``. Each agent process
has its own CLAUDE_CONFIG_DIR, so four parallel sessions never corrupt one
``.claude.json``. Skipped without the binary locally, required in CI.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.conftest import subprocess_env
from tests.fake_upstream import Call, FakeUpstream
from tests.procs import record, run_cli
from tests.test_claude_code import claude  # noqa: F401  (fixture: the binary, or skip / fail)
from tests.ws_support import branches, git, make_repo_fleet, worktrees

WANTED = re.compile(r"create the file (note-[a-z0-9]+\.txt)")
CWD = re.compile(r"[Ww]orking directory: ([^\\\n\"]+)")
TASKS = ["n1", "n2", "n3", "n4"]


def last_user_content(body: dict[str, Any]) -> list[Any]:
    """The last user message's content as a list of blocks."""
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    content = users[-1].get("content") if users else []
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def edit_then_answer(call: Call) -> dict[str, Any] | None:
    """One Write of the file the prompt names, then a final answer; None (the default) for other calls."""
    body = call.json if isinstance(call.json, dict) else {}
    if not any(t.get("name") == "Write" for t in body.get("tools") or []):
        return None
    blocks = last_user_content(body)
    if any(b.get("type") == "tool_result" for b in blocks):
        return {"content": [{"type": "text", "text": "The file is written."}], "stop_reason": "end_turn"}
    wanted = WANTED.search(" ".join(b.get("text", "") for b in blocks if b.get("type") == "text"))
    cwd = CWD.search(json.dumps(body.get("system")))
    if wanted is None or cwd is None:
        return None
    name = wanted.group(1)
    write = {"type": "tool_use", "id": f"toolu_{name.replace('.', '_')}", "name": "Write",
             "input": {"file_path": f"{cwd.group(1)}/{name}", "content": f"written by claude for {name}\n"}}
    return {"content": [write], "stop_reason": "tool_use"}


def write_fleet(root: Path, claude_bin: str, upstream: str) -> None:
    """A worktree-mode fleet of `claude -p` agents with headless editing, through the gateway to ``upstream``."""
    (root / "fleet.toml").write_text(f"""
[fleet]
default_agent = "claude"
heartbeat_s = 0.5

[workspace]
mode = "worktree"

[backends.default]
kind = "anthropic"
base_url = "{upstream}"
max_retries = 0

[models]
default = {{ backend = "default", model = "claude-sonnet-4-6" }}

[agents.claude]
kind = "command"
command = ["{claude_bin}", "-p", "{{prompt}}", "--output-format", "json", "--permission-mode", "acceptEdits"]
timeout_s = 120
env = {{ CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1", DISABLE_AUTOUPDATER = "1" }}
""")
    for task_id in TASKS:
        (root / "tasks" / f"{task_id}.toml").write_text(
            f'prompt = "Please create the file note-{task_id}.txt and nothing else."\n')


def test_four_claude_code_agents_write_in_worktrees_and_every_file_lands(
        tmp_path: Path, fake_upstream: FakeUpstream, claude: str) -> None:  # noqa: F811  (the fixture)
    root = make_repo_fleet(tmp_path / "repo", "")
    write_fleet(root, claude, fake_upstream.url)
    fake_upstream.responder = edit_then_answer
    env = subprocess_env(ANTHROPIC_API_KEY="sk-ant-fake-upstream-key", HOME=str(tmp_path / "home"))
    env.pop("CLAUDE_CONFIG_DIR", None)
    result = run_cli(root, "run", "-n", "4", "--until-empty", "--no-dashboard", timeout=240, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    state = root / ".coordinator"
    for task_id in TASKS:
        rec = record(root, task_id)
        assert rec["state"] == "done" and rec["landed"], rec
        name = f"note-{task_id}.txt"
        assert git(root, "show", f"main:{name}") == f"written by claude for {name}"  # landed on the target
        assert name in git(root, "show", "--name-only", "--format=", rec["tip"]).split()  # from its own branch
    assert sum(s.startswith("Land ") for s in git(root, "log", "--first-parent", "--format=%s").splitlines()) == 4
    assert worktrees(root) == [str(root)] and branches(root) == []
    agents = {record(root, t)["agent"] for t in TASKS}
    homes = sorted(p.parent.name for p in (state / "claude-config").glob("*/.claude.json"))
    assert homes == sorted(agents)  # Claude Code wrote its config in each agent's own folder
    stderr = "".join(p.read_text(errors="replace") for p in (state / "runs").rglob("stderr.log"))
    assert "corrupted" not in stderr
    writes = [c for c in fake_upstream.calls if '"tool_result"' in json.dumps(c.json)]
    assert len(writes) >= 4  # each agent ran the Write tool and reported back
