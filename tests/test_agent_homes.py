"""Each command agent process gets its own CLAUDE_CONFIG_DIR, seeded with settings only, kept across tasks."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.conftest import subprocess_env
from tests.procs import start_agent

SCRIPT = 'echo "$1 $CLAUDE_CONFIG_DIR" >> "{log}"\n'


def test_each_agent_has_its_own_config_dir_seeded_with_settings_only(make_fleet, tmp_path: Path) -> None:
    log = tmp_path / "seen.txt"
    (tmp_path / "a.sh").write_text(SCRIPT.format(log=log))
    root = make_fleet(textwrap.dedent(f"""
        [fleet]
        default_agent = "sh"
        heartbeat_s = 0.3
        [agents.sh]
        kind = "command"
        command = ["sh", "{tmp_path / 'a.sh'}", "{{task_id}}"]
        [agents.plain]
        kind = "command"
        own_config_dir = false
        command = ["sh", "{tmp_path / 'a.sh'}", "{{task_id}}"]
        """), {f"t{n}.toml": f'prompt = "t{n}"\n' for n in range(6)} | {"p.toml": 'prompt = "p"\nagent = "plain"\n'})
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").write_text('{"theme": "dark"}')
    (home / ".claude" / ".credentials.json").write_text("secret")
    env = subprocess_env(HOME=str(home))
    env.pop("CLAUDE_CONFIG_DIR", None)
    agents = [start_agent(root, f"a{n}", "--until-empty", env=env) for n in range(2)]
    for agent in agents:
        assert agent.wait(timeout=60) == 0
    seen = dict(line.split(" ", 1) for line in log.read_text().splitlines())
    assert seen.pop("p").strip() == ""  # turned off for that agent
    dirs = {Path(d.strip()) for d in seen.values()}
    assert all(d.parent == (root / ".coordinator" / "claude-config").resolve() for d in dirs)
    assert {d.name for d in dirs} <= {"a0", "a1"}  # one per agent process, reused across its tasks
    for folder in dirs:
        assert (folder / "settings.json").read_text() == '{"theme": "dark"}'
        assert not (folder / ".credentials.json").exists()
