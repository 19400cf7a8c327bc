"""The commands that change the queue: ``add``, ``retry``, ``cancel``, ``pause``, ``resume``.

Registered on the one Typer app of ``cli.py`` (which imports this module); like
every command they parse, call ``queue/ops.py`` and print a line.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .cli import RootOpt, _ctx, app


@app.command()
def add(ctx: typer.Context, prompt: Annotated[str | None, typer.Argument(
        help="What the task should do (or use --file).", show_default=False)] = None,
        task_id: Annotated[str | None, typer.Option("--id", help="Task id (default: from the prompt).")] = None,
        priority: Annotated[str, typer.Option(help="critical, high, normal, low, or a number (lower first).")]
        = "normal",
        depends_on: Annotated[list[str] | None, typer.Option("--depends-on", help="Id this task waits for "
                                                                 "(repeat for several).")] = None,
        agent: Annotated[str | None, typer.Option(help="An [agents.NAME] from fleet.toml.")] = None,
        file: Annotated[str | None, typer.Option("--file", "-f", help="Read the prompt from this file "
                                                 "('-' for stdin) instead of the argument.")] = None,
        root: RootOpt = None) -> None:
    """Write a new task file into tasks/ (atomically; never overwrites, never duplicates a prompt)."""
    from .queue.ops import add_task, read_prompt, unknown_dependencies  # noqa: PLC0415
    from .tasks import parse_priority  # noqa: PLC0415

    config = _ctx(ctx, root).config()
    parse_priority(priority)  # a usage error before anything is written
    path = add_task(config, read_prompt(prompt, file, sys.stdin), task_id=task_id, priority=priority,
                    depends_on=depends_on, agent=agent)
    typer.echo(f"added {path.stem} ({path.relative_to(config.root)})")
    for dep in unknown_dependencies(config, path.stem):
        typer.echo(f"warning: {path.stem} depends on {dep!r}, which is not a known task; it stays blocked until "
                   "a task with that id exists", err=True)


@app.command()
def retry(ctx: typer.Context, task_id: Annotated[str | None, typer.Argument(metavar="[ID]", show_default=False,
                                                                           help="The task to retry.")] = None,
          failed: Annotated[bool, typer.Option("--failed", help="Retry every failed task.")] = False,
          root: RootOpt = None) -> None:
    """Re-queue a failed, done or cancelled task with fresh attempts (and a fresh budget)."""
    from .errors import ConfigError  # noqa: PLC0415
    from .queue.ops import retry_failed, retry_task  # noqa: PLC0415

    if (task_id is None) == (not failed):
        raise ConfigError("name one task ID, or pass --failed for every failed task", key="ID")
    config = _ctx(ctx, root).config()
    retried = retry_failed(config) if failed else [retry_task(config, task_id or "").id]
    for done in retried:
        typer.echo(f"{done}: pending")
    if not retried:
        typer.echo("no failed task")


@app.command()
def cancel(ctx: typer.Context, task_id: Annotated[str, typer.Argument(metavar="ID")],
           root: RootOpt = None) -> None:
    """Cancel a task; a running one is stopped and its process killed."""
    from .queue.ops import blocked_reason, cancel_task  # noqa: PLC0415
    from .tasks.cache import load_cached  # noqa: PLC0415

    config = _ctx(ctx, root).config()
    was_blocked = blocked_reason(config, load_cached(config), task_id)
    cancel_task(config, task_id)
    typer.echo(f"{task_id}: cancelled" + (f" (it was blocked: {was_blocked})" if was_blocked else ""))


@app.command()
def pause(ctx: typer.Context, root: RootOpt = None) -> None:
    """Stop claiming new tasks; running tasks finish (`coordinator resume` continues)."""
    from .queue.ops import set_paused  # noqa: PLC0415

    changed = set_paused(_ctx(ctx, root).config(), True)
    typer.echo("paused: agents claim no new task; running tasks finish" if changed else "already paused")


@app.command()
def resume(ctx: typer.Context, root: RootOpt = None) -> None:
    """Let agents claim tasks again after `coordinator pause`."""
    from .queue.ops import set_paused  # noqa: PLC0415

    changed = set_paused(_ctx(ctx, root).config(), False)
    typer.echo("resumed: agents claim tasks again" if changed else "not paused")
