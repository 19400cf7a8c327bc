"""The ``command`` runner: any agent CLI (``claude -p``, a script) as an argv.

Placeholders ``{prompt}``, ``{prompt_file}``, ``{task_id}``, ``{workdir}``,
``{output_file}``, ``{deps_dir}`` (one file per dependency's output) and
``{feedback_file}`` (why the previous attempt failed) and ``{conflict_file}``
(why it did not land, in a worktree; "" otherwise) are substituted inside
argv elements in one pass; the argv runs directly, never through a shell, so
task text can never become shell syntax.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from ..errors import ConfigError
from . import RunContext, RunResult, check_acceptance
from .process import run_process

PLACEHOLDERS = ("prompt", "prompt_file", "task_id", "workdir", "output_file", "deps_dir", "feedback_file",
                "conflict_file")
PLACEHOLDER = re.compile(r"\{(?:" + "|".join(PLACEHOLDERS) + r")\}")


def build_argv(ctx: RunContext) -> list[str]:
    """The agent's command with this task's placeholders filled in."""
    prompt = ctx.task.rendered_prompt()
    prompt_file = ctx.prompt_file or ctx.run_dir / "prompt.md"
    if ctx.prompt_file is None:
        prompt_file.write_text(prompt, encoding="utf-8")
    values = {"{prompt}": prompt, "{prompt_file}": str(prompt_file), "{task_id}": ctx.task.id,
              "{workdir}": str(ctx.workdir), "{output_file}": str(ctx.run_dir / "output.md"),
              "{deps_dir}": str(ctx.deps_dir), "{feedback_file}": str(ctx.feedback_file or ""),
              "{conflict_file}": str(ctx.conflict_file or "")}
    # One pass over each template: a placeholder inside a substituted value (a prompt that
    # says "{workdir}") is text, never substituted again.
    argv = [PLACEHOLDER.sub(lambda match: values[match.group(0)], arg) for arg in ctx.agent.command]
    return argv + strict_mcp_flags(argv, strict=ctx.agent.strict_mcp_config)


def strict_mcp_flags(argv: list[str], *, strict: bool) -> list[str]:
    """``["--strict-mcp-config"]`` for a Claude Code argv that lacks it (``strict_mcp_config = false`` opts out).

    A fleet agent must not inherit the MCP servers of the user's or the project's
    Claude Code settings, above all not ``coordinator mcp``, through which an agent
    could feed its own fleet (DESIGN §11). With the flag, Claude Code uses only the
    servers of ``--mcp-config`` arguments the agent's command gives itself.
    """
    if not strict or not argv or Path(argv[0]).name != "claude" or "--strict-mcp-config" in argv:
        return []
    return ["--strict-mcp-config"]


def build_env(ctx: RunContext) -> dict[str, str]:
    """The child's environment: every SDK pointed at the gateway with this task's token."""
    env = dict(ctx.env)
    env.update(ctx.agent.env)
    env.update({"COORDINATOR_TASK_ID": ctx.task.id, "COORDINATOR_ATTEMPT": str(ctx.attempt),
                "COORDINATOR_RUN_DIR": str(ctx.run_dir), "COORDINATOR_DEPS_DIR": str(ctx.deps_dir)})
    if ctx.feedback_file is not None:
        env["COORDINATOR_FEEDBACK_FILE"] = str(ctx.feedback_file)
    if ctx.conflict_file is not None:
        env["COORDINATOR_CONFLICT_FILE"] = str(ctx.conflict_file)
    if ctx.gateway_url and ctx.gateway_token:
        env["ANTHROPIC_BASE_URL"] = ctx.gateway_url
        env["OPENAI_BASE_URL"] = ctx.gateway_url + "/v1"
        env["ANTHROPIC_API_KEY"] = ctx.gateway_token
        env["OPENAI_API_KEY"] = ctx.gateway_token
    return env


def run(ctx: RunContext) -> RunResult:
    """Run the command, then its acceptance check; output.md falls back to stdout."""
    started = time.monotonic()
    stdout, stderr = ctx.run_dir / "stdout.log", ctx.run_dir / "stderr.log"
    env = build_env(ctx)
    try:
        argv = ctx.wrap(build_argv(ctx))
    except ConfigError as exc:
        return RunResult(False, str(exc))
    result = run_process(argv, cwd=ctx.cwd, env=env, stdout=stdout, stderr=stderr,
                         timeout_s=ctx.timeout_s, should_stop=ctx.should_stop, on_spawn=ctx.on_spawn)
    output = ctx.run_dir / "output.md"
    if not output.exists() and stdout.exists():
        shutil.copyfile(stdout, output)
    if not result.ok:
        return RunResult(False, f"command {result.describe()}")
    remaining = ctx.timeout_s - (time.monotonic() - started)
    error = check_acceptance(ctx, remaining)
    return RunResult(error is None, error)


SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "fish", "busybox"})


def shell_script_placeholders(argv: list[str]) -> list[str]:
    """Placeholders inside the script of a ``sh -c SCRIPT`` argv: task text would become shell syntax.

    Passing them as arguments after the script (``sh -c 'cat "$1"' sh {prompt}``)
    is safe, so only the script itself is looked at.
    """
    programs = [Path(arg).name for arg in argv[:2]]
    if not SHELLS.intersection(programs) or "-c" not in argv:
        return []
    script_at = argv.index("-c") + 1
    script = argv[script_at] if script_at < len(argv) else ""
    return [match.group(0) for match in PLACEHOLDER.finditer(script)]
