"""Single workspace steps on a real repository: the gate cache by tree, and the llm runner's conflict context."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from coordinator.config import load_config
from coordinator.fleet import worktrees as wt
from coordinator.runners.llm import assemble
from coordinator.tasks import Task
from tests.ws_support import git, make_repo_fleet, worktrees


def test_an_unchanged_tree_is_gated_once(tmp_path: Path) -> None:
    counter = tmp_path / "gate-runs.txt"
    root = make_repo_fleet(tmp_path / "repo", "", workspace=f'gates = [["sh", "-c", "echo run >> {counter}"]]')
    config = load_config(root)
    ws = wt.create(config, "g", 1)
    (ws.path / "new.txt").write_text("new\n")
    tip = wt.commit_all(ws, "add new.txt")
    main = git(root, "rev-parse", "main")
    merge = wt.precheck(root, main, tip)
    commit = wt.candidate(config, root, merge, main, tip, "Land g")
    run = tmp_path / "run"
    run.mkdir()
    gate = {"env": {"PATH": "/usr/bin:/bin"}, "log": run / "gate.log", "should_stop": lambda: None, "on_spawn": None}
    assert wt.gate(config, ws, commit, merge.tree, **gate) == (True, "")
    again = wt.candidate(config, root, merge, main, tip, "Land g, a second candidate of the same tree")
    assert again != commit
    assert wt.gate(config, ws, again, merge.tree, **gate)[0] is True
    assert counter.read_text() == "run\n"  # the second candidate had the same tree: served from the cache
    gate_tree = wt.gate_path(ws)
    (gate_tree / "left-by-the-gate.txt").write_text("junk\n")
    (ws.path / "more.txt").write_text("more\n")  # a new tip, so a new tree: gated again, in the same worktree
    tip = wt.commit_all(ws, "add more.txt")
    merge = wt.precheck(root, main, tip)
    assert wt.gate(config, ws, wt.candidate(config, root, merge, main, tip, "Land g"), merge.tree, **gate)[0]
    assert counter.read_text() == "run\nrun\n"
    assert (gate_tree / "more.txt").read_text() == "more\n" and not (gate_tree / "left-by-the-gate.txt").exists()
    assert worktrees(root) == [str(root), str(ws.path), str(gate_tree)]


def test_the_llm_runner_appends_the_conflict_context_to_the_prompt(tmp_path: Path) -> None:
    conflict = tmp_path / "conflict.md"
    conflict.write_text("# Previous attempt: conflict\n\n- shared.txt\n")
    config = SimpleNamespace(root=tmp_path)
    agent = SimpleNamespace(shared_context=[], system="sys", model="m", max_tokens=100)
    ctx = SimpleNamespace(config=config, agent=agent, task=Task(id="t", prompt="do it"), deps={},
                          feedback_file=None, conflict_file=conflict)
    texts = [block["text"] for block in assemble(ctx)["messages"][0]["content"]]  # type: ignore[arg-type]
    assert texts == ["do it", "# Previous attempt: conflict\n\n- shared.txt\n"]
    ctx.conflict_file = None
    assert [block["text"] for block in assemble(ctx)["messages"][0]["content"]] == ["do it"]  # type: ignore[arg-type]
