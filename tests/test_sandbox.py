"""The opt-in agent sandbox (bubblewrap): a hostile agent cannot read the fleet token or another process's environ.

Needs /usr/bin/bwrap (Debian's bubblewrap). Locally the tests skip without it; CI installs it and sets
COORDINATOR_REQUIRE_BWRAP=1, which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import coordinator_argv, subprocess_env
from tests.procs import record, run_cli, wait_for

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None and not os.environ.get("COORDINATOR_REQUIRE_BWRAP"),
                                 reason="bubblewrap is not installed (apt-get install bubblewrap)")

PROBE = r'''
import json, os, sys
state, gateway_pid = sys.argv[1], int(sys.argv[2])
found = {}
try:
    found["gateway_json"] = open(os.path.join(state, "gateway.json")).read()
except OSError as exc:
    found["gateway_json"] = "denied: " + type(exc).__name__
try:
    found["environ"] = open(f"/proc/{gateway_pid}/environ", "rb").read().decode(errors="replace")
except OSError as exc:
    found["environ"] = "denied: " + type(exc).__name__
found["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
found["records"] = os.listdir(os.path.join(state, "records")) if os.path.isdir(os.path.join(state, "records")) else []
try:  # a folder on the root filesystem, outside the workdir and /tmp, that the test made for this
    open(os.path.join(OUTSIDE, "written.txt"), "w").close()
    found["wrote_outside"] = True
except OSError:
    found["wrote_outside"] = False
open("made-here.txt", "w").write("hello")
print(json.dumps(found))
'''


def sandbox_fleet(make_fleet, sandbox: str) -> Path:
    root = make_fleet(f"""
        [backends.default]
        kind = "echo"
        [agents.probe]
        kind = "command"
        sandbox = "{sandbox}"
        command = ["{sys.executable}", "probe.py", "{{workdir}}/.coordinator", "{{task_id}}"]
        [fleet]
        default_agent = "probe"
    """)
    (root / "probe.py").write_text(PROBE)
    return root


def outside_folder() -> Path:
    """A fresh folder on the root filesystem beside the venv (not under /tmp, which the sandbox replaces)."""
    folder = Path(sys.prefix) / f"sandbox-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    return folder


def run_probe(root: Path, outside: Path) -> dict:
    gateway = subprocess.Popen(coordinator_argv("-C", str(root), "gateway"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=subprocess_env(ANTHROPIC_API_KEY="sk-ant-canary-0042"))
    try:
        wait_for(lambda: (root / ".coordinator" / "gateway.json").exists(), what="gateway.json")
        (root / "tasks" / "peek.toml").write_text('prompt = "look around"\n')
        # The probe is told the gateway's pid through its task id slot: a file, so the argv stays fixed.
        probe = PROBE.replace("int(sys.argv[2])", str(gateway.pid)).replace("OUTSIDE", repr(str(outside)))
        (root / "probe.py").write_text(probe)
        result = run_cli(root, "agent", "--until-empty", timeout=60)
        assert result.returncode == 0, result.stderr
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
    assert record(root, "peek")["state"] == "done"
    (run,) = (root / ".coordinator" / "runs" / "peek").iterdir()
    return json.loads((run / "stdout.log").read_text())


@needs_bwrap
def test_a_sandboxed_agent_reads_neither_the_fleet_token_nor_other_environs(make_fleet) -> None:
    root = sandbox_fleet(make_fleet, "bwrap")
    outside = outside_folder()
    try:
        found = run_probe(root, outside)
        assert not (outside / "written.txt").exists()
    finally:
        shutil.rmtree(outside)
    assert found["gateway_json"].startswith("denied"), "the state folder is not mounted in the sandbox"
    assert found["environ"].startswith("denied") and "canary" not in found["environ"]
    assert found["records"] == [], "other tasks' records are not visible"
    assert max(found["pids"]) < 10, f"own PID namespace: only the sandbox's processes, saw {found['pids']}"
    assert found["wrote_outside"] is False, "the root filesystem is read-only"
    assert (root / "made-here.txt").read_text() == "hello", "the workdir is writable"


@needs_bwrap
def test_the_same_agent_unsandboxed_sees_both(make_fleet) -> None:
    """The control: without the sandbox the probe reads gateway.json and sees the gateway's pid."""
    root = sandbox_fleet(make_fleet, "none")
    outside = outside_folder()
    try:
        found = run_probe(root, outside)
        assert (outside / "written.txt").exists() and found["wrote_outside"] is True
    finally:
        shutil.rmtree(outside)
    assert '"token"' in found["gateway_json"]
    assert len(found["pids"]) > 10


def test_a_missing_bwrap_fails_the_attempt_with_the_fix(make_fleet, tmp_path: Path) -> None:
    root = sandbox_fleet(make_fleet, "bwrap")
    (root / "tasks" / "peek.toml").write_text('prompt = "look around"\nmax_attempts = 1\n')
    bare = tmp_path / "bin"
    bare.mkdir()
    env = subprocess_env(PATH=str(bare))
    result = run_cli(root, "agent", "--until-empty", timeout=60, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = record(root, "peek")["last_error"]
    assert "bwrap is not installed" in error and "apt-get install bubblewrap" in error


def test_validate_warns_about_a_shell_script_built_from_task_text_and_a_sandbox_without_bwrap(
        make_fleet, tmp_path: Path) -> None:
    root = make_fleet("""
        [agents.risky]
        kind = "command"
        command = ["sh", "-c", "echo {prompt} > {output_file}"]
        [agents.safe]
        kind = "command"
        command = ["sh", "-c", "echo \\"$1\\" > \\"$2\\"", "sh", "{prompt}", "{output_file}"]
        [agents.boxed]
        kind = "command"
        sandbox = "bwrap"
        command = ["true"]
    """)
    bare = tmp_path / "bin"
    bare.mkdir()
    result = run_cli(root, "validate", "--json", env=subprocess_env(PATH=str(bare)))
    assert result.returncode == 0, "warnings do not fail validate"
    warnings = {w["field"]: w["error"] for w in json.loads(result.stdout)["warnings"]}
    assert set(warnings) == {"agents.risky.command", "agents.boxed.sandbox"}
    assert "{prompt}, {output_file}" in warnings["agents.risky.command"]
    assert "apt-get install bubblewrap" in warnings["agents.boxed.sandbox"]
