"""What an agent does with a claimed task: the ``llm`` or the ``command`` runner.

Both take a ``RunContext`` and return a ``RunResult``; the agent owns claiming,
heartbeats and recording, the runner only the work. Runner modules are imported
on first use, so an agent that runs commands never imports an HTTP client.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import AgentConfig, FleetConfig
from ..errors import ConfigError
from ..tasks import Task
from .process import run_process


@dataclass
class RunContext:
    """Everything a runner needs for one attempt of one task."""

    task: Task
    agent_id: str
    agent_name: str
    agent: AgentConfig
    config: FleetConfig
    attempt: int
    run_dir: Path
    workdir: Path
    env: Mapping[str, str]
    should_stop: Callable[[], str | None]
    gateway_url: str | None = None
    gateway_token: str | None = None  # this task's own token, never the fleet token
    on_spawn: Callable[[int], None] | None = None  # told each child pid, so a takeover can kill it
    prompt_file: Path | None = None  # the rendered prompt, as this run used it (run_dir/prompt.md)
    workdir_fd: int | None = None  # the workdir opened without following symlinks; children enter by it
    deps: dict[str, Path] = field(default_factory=dict)  # each done dependency's output, copied into run_dir/deps
    feedback_file: Path | None = None  # why the previous attempt failed, on a retried attempt
    conflict_file: Path | None = None  # workspaces: why the previous attempt did not land (conflict, red gate)
    after_work: Callable[[], str | None] | None = None  # workspaces: commit the work before acceptance

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` as the agent runs it: inside its sandbox when it has one (``ConfigError`` if unusable)."""
        if self.agent.sandbox == "none":
            return argv
        from .sandbox import sandboxed  # noqa: PLC0415

        return sandboxed(argv, agent_name=self.agent_name, state_dir=self.config.state_dir, run_dir=self.run_dir,
                         workdir=self.workdir, workdir_fd=self.workdir_fd)

    @property
    def cwd(self) -> Path | int:
        """Where children run: the workdir's descriptor when there is one, else its path."""
        return self.workdir_fd if self.workdir_fd is not None else self.workdir

    @property
    def deps_dir(self) -> Path:
        """The folder holding the dependencies' outputs (``{deps_dir}``; empty when there are none)."""
        folder = self.run_dir / "deps"
        folder.mkdir(exist_ok=True)
        return folder

    @property
    def timeout_s(self) -> float:
        """The task's timeout, else its agent's."""
        return self.task.timeout_s if self.task.timeout_s is not None else self.agent.timeout_s


@dataclass
class RunResult:
    """An attempt's outcome: ok, or the one-line reason it failed, plus usage."""

    ok: bool
    error: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    infra: bool = False  # failed because the gateway was unreachable, not because of the task


class Runner(Protocol):
    """Runs one attempt."""

    def __call__(self, ctx: RunContext) -> RunResult: ...


def get_runner(kind: str) -> Runner:
    """The runner function for an agent ``kind`` ("llm" or "command")."""
    module = importlib.import_module(f".{kind}", __name__)
    return module.run


def check_acceptance(ctx: RunContext, remaining_s: float) -> str | None:
    """Run the task's ``acceptance`` argv in its workdir; None when it passes.

    In a worktree, the work is committed first (``after_work``), so acceptance
    checks exactly what would land and its own leftovers are never committed.
    """
    if ctx.after_work is not None and (error := ctx.after_work()) is not None:
        return error
    if not ctx.task.acceptance:
        return None
    log = ctx.run_dir / "acceptance.log"
    try:
        argv = ctx.wrap(list(ctx.task.acceptance))
    except ConfigError as exc:
        return str(exc)
    result = run_process(argv, cwd=ctx.cwd, env=ctx.env, stdout=log, stderr=log,
                         timeout_s=max(remaining_s, 1.0), should_stop=ctx.should_stop, on_spawn=ctx.on_spawn)
    if result.ok:
        return None
    return f"acceptance {ctx.task.acceptance[0]!r} {result.describe()} (see {log.name})"


def agent_warnings(config: FleetConfig) -> list[tuple[str, str]]:
    """(fleet.toml key, message) for agent settings that will misbehave at run time (``validate``)."""
    from .command import shell_script_placeholders  # noqa: PLC0415
    from .sandbox import INSTALL_HINT, bwrap_path  # noqa: PLC0415

    found = []
    for name, agent in config.agents.items():
        risky = shell_script_placeholders(agent.command) if agent.kind == "command" else []
        if risky:
            found.append((f"agents.{name}.command", f"the shell script after -c contains {', '.join(risky)}, so task "
                          "text becomes shell syntax; pass it after the script and use $1 there instead: "
                          "[\"sh\", \"-c\", \"echo \\\"$1\\\"\", \"sh\", \"{prompt}\"]"))
        if agent.sandbox == "bwrap" and bwrap_path() is None:
            found.append((f"agents.{name}.sandbox", f"bwrap is not installed, so every task of this agent fails; "
                          f"{INSTALL_HINT}"))
    return found
