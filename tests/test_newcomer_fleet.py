"""What a new user trips on (issue 10), shown with real `coordinator` processes over real files.

Dependency outputs reach dependents; a failed attempt backs off and the next one is
told why, and makes a new upstream call; one fleet per root, beside a running
`coordinator gateway`; an agent with no gateway waits instead of burning attempts.
The upstream is the offline echo backend throughout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import coordinator_argv, subprocess_env
from tests.procs import events, record, run_cli, start_agent, stop, wait_for

ECHO_FLEET = """
[fleet]
heartbeat_s = 0.5
retry_backoff_s = {backoff}

[backends.default]
kind = "echo"
latency_ms = 5

[agents.llm]
kind = "llm"
system = "You are a careful engineer."
shared_context = ["context/*.md"]
"""
SHARED_DOC = "Every change keeps the claim protocol's properties and is tested with real processes.\n"


def echo_fleet(make_fleet, tasks: dict[str, str], *, backoff: float = 0.2) -> Path:
    """A fleet of the `llm` agent on the echo backend, with one shared context file."""
    root = make_fleet(ECHO_FLEET.format(backoff=backoff), tasks)
    (root / "context").mkdir()
    (root / "context" / "rules.md").write_text(SHARED_DOC)
    return root


def run_dir(root: Path, task_id: str, epoch: int) -> Path:
    return root / ".coordinator" / "runs" / task_id / str(epoch)


def request(root: Path, task_id: str, epoch: int = 1) -> dict[str, Any]:
    """The Messages API body an llm run sent (request.json)."""
    return json.loads((run_dir(root, task_id, epoch) / "request.json").read_text())


def status_json(root: Path) -> dict[str, Any]:
    result = run_cli(root, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def start_background(root: Path, name: str, *args: str) -> subprocess.Popen:
    """A long-running coordinator command in its own process group; output to ``<name>.out``."""
    out = open(root / f"{name}.out", "ab")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(coordinator_argv("-C", str(root), *args), stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=subprocess_env(), start_new_session=True)


def gateway_file(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / ".coordinator" / "gateway.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def start_gateway(root: Path, name: str = "gateway") -> subprocess.Popen:
    """`coordinator gateway`, returned once gateway.json names it."""
    proc = start_background(root, name, "gateway")
    wait_for(lambda: (gateway_file(root) or {}).get("pid") == proc.pid or proc.poll() is not None,
             what="gateway.json naming the new gateway")
    assert proc.poll() is None, (root / f"{name}.out").read_text()
    return proc


def done_ids(root: Path) -> Counter:
    return Counter(e["task"] for e in events(root) if e["event"] == "done")


# -- 1. dependency outputs -------------------------------------------------------


def test_a_dependent_llm_request_holds_its_dependency_output_after_the_shared_prefix(make_fleet) -> None:
    root = echo_fleet(make_fleet, {
        "outline.toml": 'prompt = "Outline the claim protocol in three points."\n',
        "summary.toml": 'prompt = "Summarize the outline."\ndepends_on = ["outline"]\n',
        "blind.toml": 'prompt = "Summarize it blind."\ndepends_on = ["outline"]\nuse_dependency_outputs = false\n',
    })
    result = run_cli(root, "run", "-n", "2", "--until-empty", "--no-dashboard", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    produced = (run_dir(root, "outline", 1) / "output.md").read_text()
    assert produced.strip(), "the dependency produced an output"
    base, dependent = request(root, "outline"), request(root, "summary")
    # The shared prefix (system prompt + shared context) is byte-identical, so the gateway caches it once.
    assert json.dumps(dependent["system"]) == json.dumps(base["system"])
    assert any(SHARED_DOC in block["text"] for block in dependent["system"])
    assert "<dependency_output" not in json.dumps(base)
    texts = [block["text"] for block in dependent["messages"][0]["content"]]
    block = f'<dependency_output task="outline">\n{produced}\n</dependency_output>'
    assert block in texts, texts
    assert texts.index(block) < texts.index("Summarize the outline."), "the outputs come before the prompt"
    assert "<dependency_output" not in json.dumps(request(root, "blind")), "use_dependency_outputs = false"


READER = """\
for f in "$1"/*; do
  [ -e "$f" ] || continue
  printf '%s=%s\\n' "${f##*/}" "$(cat "$f")"
done > "$2"
printf 'arg=%s\\nenv=%s\\n' "$1" "$COORDINATOR_DEPS_DIR" >> "$2"
"""


def test_a_command_agent_reads_one_file_per_dependency_in_the_deps_folder(make_fleet) -> None:
    root = make_fleet(tasks={
        "a.toml": 'prompt = "alpha"\n',
        "b.toml": 'prompt = "beta"\n',
        "reads.toml": 'prompt = "read them"\nagent = "reader"\ndepends_on = ["a", "b"]\n',
        "optout.toml": 'prompt = "read none"\nagent = "reader"\ndepends_on = ["a", "b"]\n'
                       'use_dependency_outputs = false\n',
    })
    (root / "reader.sh").write_text(READER)
    (root / "fleet.toml").write_text(f"""
[fleet]
default_agent = "producer"
heartbeat_s = 0.5

[agents.producer]
kind = "command"
command = ["sh", "-c", 'printf %s "$1" > "$2"', "sh", "{{prompt}}", "{{output_file}}"]

[agents.reader]
kind = "command"
command = ["sh", "{root / 'reader.sh'}", "{{deps_dir}}", "{{output_file}}"]
""")
    result = run_cli(root, "run", "-n", "2", "--until-empty", "--no-dashboard", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    deps = run_dir(root, "reads", 1) / "deps"
    assert (run_dir(root, "reads", 1) / "output.md").read_text() == f"a.md=alpha\nb.md=beta\narg={deps}\nenv={deps}\n"
    none = run_dir(root, "optout", 1) / "deps"
    assert (run_dir(root, "optout", 1) / "output.md").read_text() == f"arg={none}\nenv={none}\n"


# -- 2. retries that retry ----------------------------------------------------------

# Fails its first two runs, passes the third; each run says which one it was.
COUNTING_CHECK = ('["sh", "-c", "n=$(cat tries 2>/dev/null || echo 0); n=$((n+1)); echo $n > tries; '
                  'echo check run $n; test $n -ge 3"]')


def test_a_failed_acceptance_backs_off_capped_and_the_next_attempt_is_told_why(make_fleet) -> None:
    root = make_fleet("""
        [fleet]
        default_agent = "sh"
        heartbeat_s = 0.5
        retry_backoff_s = 0.4
        retry_backoff_max_s = 0.5

        [agents.sh]
        kind = "command"
        command = ["sh", "-c", 'printf "%s\\n%s\\n" "$1" "${COORDINATOR_FEEDBACK_FILE-unset}" > "$2"', "sh",
                   "{feedback_file}", "{output_file}"]
    """, {"flaky.toml": f'prompt = "make the check pass"\nmax_attempts = 3\nacceptance = {COUNTING_CHECK}\n'})
    result = run_cli(root, "run", "-n", "1", "--until-empty", "--no-dashboard", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rec = record(root, "flaky")
    assert rec["state"] == "done" and rec["attempts"] == 3
    first, second, third = rec["history"]
    assert [h["outcome"] for h in rec["history"]] == ["failed", "failed", "done"]
    retrying = [e for e in events(root) if e["event"] == "retrying"]
    assert [e["attempt"] for e in retrying] == [1, 2]
    # The store sets retry_at = finish time + backoff (the two clock reads of one operation are
    # microseconds apart): 0.4 s after attempt 1, then 0.8 s capped at retry_backoff_max_s = 0.5.
    assert abs(retrying[0]["retry_at"] - first["finished_at"] - 0.4) < 0.05
    assert abs(retrying[1]["retry_at"] - second["finished_at"] - 0.5) < 0.05
    # ...and refuses a claim before retry_at: the recorded start of the next attempt is not earlier.
    assert second["started_at"] >= retrying[0]["retry_at"] and third["started_at"] >= retrying[1]["retry_at"]
    assert second["started_at"] - first["finished_at"] >= 0.4 - 0.05
    assert third["started_at"] - second["finished_at"] >= 0.5 - 0.05
    assert (run_dir(root, "flaky", 1) / "output.md").read_text() == "\nunset\n", "attempt 1 has no feedback"
    for attempt in (2, 3):
        feedback = run_dir(root, "flaky", attempt) / "feedback.md"
        text = feedback.read_text()
        assert f"Attempt {attempt - 1} failed: acceptance 'sh' exited with code 1" in text, text
        assert f"check run {attempt - 1}" in text, "the failed check's own output is offered too"
        # {feedback_file} and COORDINATOR_FEEDBACK_FILE both point at it.
        assert (run_dir(root, "flaky", attempt) / "output.md").read_text() == f"{feedback}\n{feedback}\n"


def test_attempt_2_after_a_failed_acceptance_makes_a_new_upstream_call(make_fleet) -> None:
    root = echo_fleet(make_fleet, {"once.toml": 'prompt = "Write the answer."\n'
                                   'acceptance = ["sh", "-c", "test -e marker || { touch marker; exit 1; }"]\n'})
    result = run_cli(root, "run", "-n", "1", "--until-empty", "--no-dashboard", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rec = record(root, "once")
    assert rec["state"] == "done" and rec["attempts"] == 2
    assert rec["history"][1]["started_at"] >= rec["history"][0]["finished_at"] + 0.2 - 0.05
    assert "Attempt 1 failed: acceptance 'sh'" in json.dumps(request(root, "once", 2)["messages"])
    gateway = status_json(root)["gateway"]
    assert (gateway["requests"], gateway["upstream_calls"], gateway["dedup_hits"], gateway["dedup_joined"]) \
        == (2, 2, 0, 0), gateway


def test_coordinator_retry_of_a_done_llm_task_is_not_served_from_the_gateway_cache(make_fleet) -> None:
    """The same request body twice, through one gateway that caches answers: the retry still goes upstream."""
    root = echo_fleet(make_fleet, {"again.toml": 'prompt = "Write the answer."\n'})
    gateway = start_gateway(root)
    try:
        assert run_cli(root, "agent", "--until-empty").returncode == 0
        assert run_cli(root, "retry", "again").returncode == 0
        result = run_cli(root, "agent", "--until-empty")
        assert result.returncode == 0, result.stderr
        assert record(root, "again")["state"] == "done"
        assert request(root, "again", 1) == request(root, "again", 2), "a body the cache could answer"
        stats = status_json(root)["gateway"]
    finally:
        stop(gateway, signal.SIGTERM)
    assert (stats["requests"], stats["upstream_calls"], stats["dedup_hits"]) == (2, 2, 0), stats


# -- 3. one fleet per root ----------------------------------------------------------


def test_run_reuses_a_running_gateway_refuses_a_second_run_and_leaves_the_gateway_running(make_fleet) -> None:
    root = echo_fleet(make_fleet, {"first.toml": 'prompt = "First task."\n'})
    gateway = start_gateway(root)
    run = start_background(root, "run", "run", "-n", "1", "--watch", "--no-dashboard")
    try:
        wait_for(lambda: done_ids(root)["first"] == 1, what="the first task done through the gateway")
        assert gateway_file(root)["pid"] == gateway.pid, "run reused the gateway instead of replacing it"
        assert not [e for e in events(root) if e["event"] == "gateway_started"]
        spawned = [e for e in events(root) if e["event"] == "agent_spawned"]
        second = run_cli(root, "run", "-n", "1", "--until-empty", "--no-dashboard")
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.count("\n") == 1 and "a fleet is already running" in second.stderr
        assert f"pid {run.pid}" in second.stderr
        assert [e for e in events(root) if e["event"] == "agent_spawned"] == spawned, "no second agent-1"
        os.kill(run.pid, signal.SIGTERM)
        assert run.wait(timeout=30) == 143, (root / "run.out").read_text()
        assert gateway.poll() is None, "the gateway run did not start is left running"
        assert gateway_file(root)["pid"] == gateway.pid, "and gateway.json still names it"
    finally:
        stop(run)
        stop(gateway, signal.SIGTERM)


# -- 4. an agent with no gateway waits -------------------------------------------------


def test_an_agent_without_a_gateway_waits_for_one_and_spends_no_attempt(make_fleet) -> None:
    root = echo_fleet(make_fleet, {"w1.toml": 'prompt = "First."\n', "w2.toml": 'prompt = "Second."\n'})
    agent = start_agent(root, "waiter", "--until-empty")
    gateway = None
    try:
        log = root / "waiter.stderr"
        wait_for(lambda: log.exists() and "waiting for" in log.read_text(), what="the agent saying it waits")
        (line,) = [line for line in log.read_text().splitlines() if "waiting for" in line]
        assert "gateway" in line and "Traceback" not in log.read_text()
        assert agent.poll() is None, "it waits instead of exiting"
        released = [e for e in events(root) if e["event"] == "released"]
        assert released and all(e["reason"].startswith("infrastructure") for e in released)
        for task in {e["task"] for e in released}:
            assert (record(root, task)["state"], record(root, task)["attempts"]) == ("pending", 0)
        gateway = start_gateway(root)
        assert agent.wait(timeout=60) == 0, log.read_text()
    finally:
        stop(agent)
        if gateway is not None:
            stop(gateway, signal.SIGTERM)
    for task in ("w1", "w2"):
        assert (record(root, task)["state"], record(root, task)["attempts"]) == ("done", 1)
