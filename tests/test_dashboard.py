"""What `coordinator run` and `status` show, rendered from a hand-built status dict into a fixed-width console.

Every view is a pure function of a DESIGN §8 status dict (plus events and
elapsed time), so these tests compare text: exact lines for the summary and the
plain progress line, and the key lines and rows of the live dashboard.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.console import Console

from coordinator.ui.dashboard import plain_line, render_dashboard, summary_table
from coordinator.ui.tables import render_status


def make_status(**overrides: Any) -> dict[str, Any]:
    """A status in the DESIGN §8 shape, every number distinct so a misplaced one shows."""
    now = time.time()
    status = {
        "tasks": {"pending": 3, "blocked": 1, "running": 2, "done": 7, "failed": 4, "invalid": 2, "cancelled": 5},
        "agents": [
            {"id": "agent-1", "pid": 4242, "alive": True, "state": "running", "task": "t-alpha",
             "heartbeat_age_s": 0.4, "task_started_at": now - 12.2, "task_elapsed_s": 12.2, "done": 11,
             "failed": 6},
            {"id": "agent-2", "pid": 4343, "alive": False, "state": "dead", "task": None,
             "heartbeat_age_s": 31.0, "task_started_at": None, "task_elapsed_s": None, "done": 9, "failed": 8},
        ],
        "gateway": {"running": True, "url": "http://127.0.0.1:40123", "requests": 40, "upstream_calls": 13,
                    "dedup_joined": 20, "dedup_hits": 7, "input_tokens": 1234, "output_tokens": 567,
                    "cache_read_tokens": 890, "cache_write_tokens": 111, "usd": 0.1234, "usd_saved": 0.5678},
        "stale_claims": [{"task": "t-beta", "agent": "agent-2", "pid": 4343, "epoch": 3, "reason": "dead",
                          "age_s": 31.0}],
        "invalid_files": [{"path": "tasks/x.toml", "error": "tasks/x.toml:1: prompt: required key is missing"},
                          {"path": "tasks/y.toml", "error": "tasks/y.toml: has no task in it"}],
        "healthy": False,
        "problems": ["1 stale claim(s)", "2 invalid task file(s)"],
    }
    status.update(overrides)
    return status


def render(renderable: Any) -> list[str]:
    """The renderable as plain text lines at width 100, trailing spaces dropped."""
    console = Console(width=100, record=True, color_system=None, force_terminal=False)
    console.print(renderable)
    return [line.rstrip() for line in console.export_text().splitlines()]


def inner(line: str) -> str:
    """A dashboard line without the panel's border."""
    return line.strip("│").strip()


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


# -- the end-of-run summary and the plain progress line ------------------------------------------------------------


def test_summary_table_lists_counts_gateway_savings_and_invalid_files() -> None:
    lines = render(summary_table(make_status(), 12.34))
    assert [line.strip() for line in lines] == [
        "fleet summary (12.3s)",
        "done       7",
        "failed     4",
        "blocked    1",
        "invalid    2",
        "cancelled  5",
        "pending    3",
        "running    2",
        "requests   40 (13 upstream, 27 collapsed: 20 joined, 7 cache hits)",
        "tokens     1234 in, 567 out, 890 cache read, 111 cache write",
        "cost       $0.1234 (saved $0.5678)",
        "invalid: tasks/x.toml:1: prompt: required key is missing",
        "invalid: tasks/y.toml: has no task in it",
    ]
    assert lines[1] == "done       7", "rows are left-aligned; only the title is centred"


def test_summary_table_of_a_clean_run_shows_done_even_at_zero_and_hides_empty_states() -> None:
    counts = dict.fromkeys(("pending", "blocked", "running", "done", "failed", "invalid", "cancelled"), 0)
    gateway = {**make_status()["gateway"], "requests": 0, "upstream_calls": 0, "dedup_joined": 0, "dedup_hits": 0,
               "usd": 0.0, "usd_saved": 0.0}
    lines = render(summary_table(make_status(tasks=counts, gateway=gateway, invalid_files=[]), 0.0))
    assert [line.strip() for line in lines[:3]] == ["fleet summary (0.0s)", "done      0",
                                                    "requests  0 (0 upstream, 0 collapsed: 0 joined, 0 cache hits)"]
    assert lines[-1].strip() == "cost      $0.0000 (saved $0.0000)"
    assert not any(line.startswith(("failed", "pending", "invalid")) for line in lines)


def test_plain_line_is_exact() -> None:
    assert plain_line(make_status(), 12.34) == (
        "[   12.3s] 16/22 finished: done 7 failed 4 cancelled 5 running 2 pending 3 blocked 1 invalid 2 "
        "| requests 40 upstream 13 saved $0.5678")
    assert plain_line(make_status(), 1234.56).startswith("[ 1234.6s] 16/22 finished")


# -- the live dashboard ------------------------------------------------------------------------------------------


def dashboard_lines(events: list[dict[str, Any]] | None = None, tokens: dict[str, int] | None = None,
                    **overrides: Any) -> list[str]:
    lines = render(render_dashboard(make_status(**overrides), events or [], 12.34, tokens))
    assert lines[0].startswith("╭") and " fleet " in lines[0] and lines[-1].startswith("╰")
    assert all(len(line) == 100 for line in lines), "the panel fills the console width"
    return [inner(line) for line in lines[1:-1]]


def row_of(lines: list[str], first_cell: str) -> list[str]:
    (row,) = [line.split() for line in lines if line.split()[:1] == [first_cell]]
    return row


def test_dashboard_header_progress_and_queue_counts() -> None:
    lines = dashboard_lines()
    # finished = done + failed + cancelled; total = every valid task (invalid files excluded)
    assert lines[0] == "coordinator  16/22 finished  running 2  12.3s"
    assert lines[1].startswith("━") and set(lines[1]) <= {"━", "╸"}, "the progress bar has a line of its own"
    assert lines[2] == "tasks  pending 3  blocked 1  running 2  done 7  failed 4  invalid 2  cancelled 5"


def test_dashboard_has_one_row_per_agent_with_task_tokens_done_failed() -> None:
    lines = dashboard_lines(tokens={"t-alpha": 4321, "t-other": 99})
    header = row_of(lines, "AGENT")
    assert header == ["AGENT", "PID", "STATE", "TASK", "ELAPSED", "BEAT", "TOKENS", "DONE", "FAILED"]
    first = row_of(lines, "agent-1")
    assert first[:4] == ["agent-1", "4242", "running", "t-alpha"]
    assert first[4] in ("12s", "13s")  # elapsed is measured against the wall clock
    assert first[5:] == ["0.4s", "4321", "11", "6"]
    assert row_of(lines, "agent-2") == ["agent-2", "4343", "dead", "-", "-", "31.0s", "-", "9", "8"]


def test_dashboard_without_agents_says_so() -> None:
    lines = dashboard_lines(agents=[])
    assert "(no agents)" in lines


def gateway_text(lines: list[str]) -> str:
    """The gateway line, joined back where the panel wrapped it."""
    at = next(n for n, line in enumerate(lines) if line.startswith("gateway "))
    return " ".join(line for line in lines[at:at + 2] if line)


def test_dashboard_gateway_line_shows_requests_upstream_dedup_and_savings() -> None:
    assert gateway_text(dashboard_lines()) == (
        "gateway http://127.0.0.1:40123  requests 40  upstream 13  joined 20  hits 7  cache read 890 / "
        "write 111 tok  $0.1234 (saved $0.5678)")
    stopped = make_status()["gateway"] | {"running": False, "url": None}
    assert gateway_text(dashboard_lines(gateway=stopped)).startswith("gateway stopped  requests 40  upstream 13")
    gone = stopped | {"unreachable": True}
    assert gateway_text(dashboard_lines(gateway=gone)).startswith("gateway unreachable  requests 40")


def test_dashboard_recent_events_show_the_last_eight_state_changes() -> None:
    ts = 1_700_000_000.0
    events = [{"ts": ts + n, "event": "claimed", "task": f"t{n}", "agent": "agent-1"} for n in range(10)]
    events += [{"ts": ts + 20, "event": "agent_started", "agent": "agent-1"},  # not a shown kind
               {"ts": ts + 21, "event": "failed", "task": "t9", "agent": "agent-1",
                "error": "command exited with code 1"},
               {"ts": ts + 22, "event": "reclaimed", "task": "t3", "agent": "agent-2", "reason": "dead"}]
    lines = dashboard_lines(events=events)
    recent = lines[lines.index("recent events") + 1:]
    assert recent == [f"{clock(ts + n)} claimed   t{n} agent-1" for n in range(4, 10)] + [
        f"{clock(ts + 21)} failed    t9 agent-1 — command exited with code 1",
        f"{clock(ts + 22)} reclaimed t3 agent-2 — dead"]
    assert dashboard_lines()[-1] == "(no events yet)"


# -- `coordinator status` ----------------------------------------------------------------------------------------


def test_render_status_lines() -> None:
    lines = render(render_status(make_status()))
    assert lines[0] == "tasks  pending 3  blocked 1  running 2  done 7  failed 4  invalid 2  cancelled 5"
    assert lines[1].split() == ["AGENT", "PID", "STATE", "TASK", "ELAPSED", "BEAT", "TOKENS", "DONE", "FAILED"]
    first, second = lines[2].split(), lines[3].split()
    assert first[:4] == ["agent-1", "4242", "running", "t-alpha"] and first[5:] == ["0.4s", "-", "11", "6"]
    assert second == ["agent-2", "4343", "dead", "-", "-", "31.0s", "-", "9", "8"]
    gateway = " ".join(lines[4:6])
    assert gateway == ("gateway http://127.0.0.1:40123  requests 40  upstream 13  joined 20  hits 7  cache read "
                       "890 / write 111 tok  $0.1234 (saved $0.5678)")
    assert lines[6:] == [
        "stale claim: t-beta held by agent-2 (pid 4343, dead, 31.0s)",
        "invalid: tasks/x.toml:1: prompt: required key is missing",
        "invalid: tasks/y.toml: has no task in it",
        "unhealthy: 1 stale claim(s); 2 invalid task file(s)",
    ]


def test_render_status_of_a_healthy_idle_fleet() -> None:
    counts = dict.fromkeys(("pending", "blocked", "running", "done", "failed", "invalid", "cancelled"), 0) | {
        "done": 3}
    gateway = make_status()["gateway"] | {"running": False, "url": None}
    lines = render(render_status(make_status(tasks=counts, agents=[], gateway=gateway, stale_claims=[],
                                             invalid_files=[], healthy=True, problems=[])))
    assert lines[0] == "tasks  pending 0  blocked 0  running 0  done 3  failed 0  invalid 0  cancelled 0"
    assert lines[2] == "(no agents)"
    assert lines[3].startswith("gateway stopped  requests 40  upstream 13  joined 20  hits 7")
    assert lines[-1] == "healthy"


# -- the merge queue (worktree mode) -------------------------------------------------------------------------------


MERGE_QUEUE = {"waiting": 3, "gating": "t-gate", "held": {"task": "t-held", "reason": "/repo has main dirty"},
               "landed": 12, "conflicts": 2, "last_landed": {"task": "t-last", "commit": "abcdef1234567", "at": 1.0}}


def test_dashboard_shows_the_merge_queue_held_landing_and_last_landing() -> None:
    lines = dashboard_lines(merge_queue=MERGE_QUEUE)
    at = lines.index("merge queue  waiting 3  gating t-gate  landed 12  conflicts 2  last t-last (abcdef1)")
    assert lines[at + 1] == "held: t-held: /repo has main dirty"
    assert lines.index("recent events") > at  # between the gateway and the events
    quiet = dashboard_lines(merge_queue={**MERGE_QUEUE, "held": None, "gating": None, "last_landed": None})
    assert "merge queue  waiting 3  gating -  landed 12  conflicts 2" in quiet
    assert not any(line.startswith("held:") for line in quiet)


def test_dashboard_without_workspaces_has_no_merge_queue() -> None:
    assert not any(line.startswith("merge queue") for line in dashboard_lines())


def test_dashboard_recent_events_show_landings_and_conflicts() -> None:
    ts = 1_700_000_000.0
    events = [{"ts": ts, "event": "landed", "task": "t1", "agent": "agent-1", "commit": "abc"},
              {"ts": ts + 1, "event": "conflict", "task": "t2", "agent": "agent-2",
               "reason": "merge conflict in a.txt", "state": "pending"},
              {"ts": ts + 2, "event": "workspace_closed", "task": "t2", "steps_ms": {}}]  # not a shown kind
    lines = dashboard_lines(events=events, merge_queue=MERGE_QUEUE)
    assert lines[lines.index("recent events") + 1:] == [
        f"{clock(ts)} landed    t1 agent-1", f"{clock(ts + 1)} conflict  t2 agent-2 — merge conflict in a.txt"]


def test_render_status_shows_the_merge_queue_when_there_is_one() -> None:
    lines = render(render_status(make_status(merge_queue=MERGE_QUEUE)))
    at = lines.index("merge queue  waiting 3  gating t-gate  landed 12  conflicts 2  last t-last (abcdef1)")
    assert lines[at + 1] == "held: t-held: /repo has main dirty"
    assert not any(line.startswith("merge queue") for line in render(render_status(make_status())))
