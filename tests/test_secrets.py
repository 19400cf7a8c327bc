"""Provider keys stay with the gateway: no agent, runner, state file or CLI output ever holds one.

A real ``command`` agent dumps its whole environment; the fleet runs under a
shell where every variable of ``PROVIDER_KEY_VARS``, plus the ``api_key_env`` a
backend names, holds a distinct secret. Run once by a lone ``coordinator agent``
and once by ``coordinator run`` (gateway and supervisor included).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.provider_keys import PROVIDER_KEY_VARS
from tests.conftest import subprocess_env
from tests.procs import record, run_cli

CUSTOM_KEY_VAR = "MY_PROVIDER_KEY"
CANARY = ("SECRETS_TEST_CANARY", "an ordinary variable passes through")

# Writes the environment it was given to env-<task>.json in its workdir (the fleet root), and to stdout.
DUMP_SCRIPT = """
import json, os, sys
env = dict(os.environ)
with open(f"env-{sys.argv[1]}.json", "w") as fh:
    json.dump(env, fh)
print(json.dumps(env))
"""

FLEET = f"""
[fleet]
default_agent = "dump"
heartbeat_s = 0.5

[backends.default]
kind = "echo"
latency_ms = 0

[backends.provider]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "{CUSTOM_KEY_VAR}"

[models]
provider = {{ backend = "provider", model = "some-upstream-model" }}

[agents.dump]
kind = "command"
command = [{json.dumps(sys.executable)}, "dump_env.py", "{{task_id}}"]
"""

TASKS = {"one.toml": 'prompt = "dump your environment"\n', "two.toml": 'prompt = "dump it again"\nmodel = "provider"\n'}


def secrets() -> dict[str, str]:
    """A distinct, recognisable value for every variable that may hold a key."""
    return {name: f"sk-secret-{n:02d}-{name.lower()}-do-not-leak"
            for n, name in enumerate(sorted(PROVIDER_KEY_VARS | {CUSTOM_KEY_VAR}))}


@pytest.fixture
def secret_fleet(make_fleet: Callable[..., Path]) -> Callable[[str], Path]:
    def build(name: str) -> Path:
        root = make_fleet(FLEET, TASKS, name=name)
        (root / "dump_env.py").write_text(DUMP_SCRIPT)
        return root

    return build


def assert_nothing_leaked(root: Path, result: subprocess.CompletedProcess) -> list[dict[str, str]]:
    """Every task ran and dumped an environment with no secret in it; no state file or output holds one."""
    values = secrets()
    assert result.returncode == 0, result.stdout + result.stderr
    dumps = []
    for task_id in ("one", "two"):
        assert record(root, task_id)["state"] == "done"
        env = json.loads((root / f"env-{task_id}.json").read_text())
        assert env.get(CANARY[0]) == CANARY[1]  # the environment did come through, minus the keys
        assert CUSTOM_KEY_VAR not in env
        leaked = sorted(name for name, value in env.items() if any(secret in value for secret in values.values()))
        assert leaked == []
        dumps.append(env)
    state_files = [p for p in (root / ".coordinator").rglob("*") if p.is_file()]
    assert any(p.name == "stdout.log" for p in state_files)  # the dumps reached the state folder too
    for path in state_files:
        data = path.read_bytes()
        found = [name for name, secret in values.items() if secret.encode() in data]
        assert found == [], f"{path} holds {found}"
    for stream in (result.stdout, result.stderr):
        assert [name for name, secret in values.items() if secret in stream] == []
    return dumps


def test_a_lone_agent_passes_no_key_to_its_runner(secret_fleet) -> None:
    root = secret_fleet("lone-agent")
    result = run_cli(root, "agent", "--id", "solo", "--until-empty", timeout=120,
                     env=subprocess_env(**secrets(), **dict([CANARY])))
    dumps = assert_nothing_leaked(root, result)
    for env in dumps:  # no gateway is running: the runner gets no key variable at all
        assert sorted(PROVIDER_KEY_VARS & env.keys()) == []


def test_a_fleet_run_gives_runners_gateway_tokens_only(secret_fleet) -> None:
    root = secret_fleet("fleet-run")
    result = run_cli(root, "run", "-n", "1", "--until-empty", "--no-dashboard", timeout=120,
                     env=subprocess_env(**secrets(), **dict([CANARY])))
    dumps = assert_nothing_leaked(root, result)
    for env in dumps:  # the gateway's per-task token stands where a provider key would be
        assert env["ANTHROPIC_BASE_URL"].startswith("http://127.0.0.1:")
        assert env["ANTHROPIC_API_KEY"] == env["OPENAI_API_KEY"] and env["ANTHROPIC_API_KEY"]
        assert sorted(PROVIDER_KEY_VARS & env.keys()) == ["ANTHROPIC_API_KEY", "OPENAI_API_KEY"]
