"""The ``coordinator`` command line: thin Typer commands that parse, call the core, render.

Heavy modules (the gateway, SDKs, rich tables) are imported inside the commands
that use them, so ``coordinator --help`` and ``status`` start fast. Every
``CoordinatorError`` is caught once, in ``main``, and printed as one line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import CoordinatorError

# rich_markup_mode=None: plain click help, so "[fleet] agents" and "[agents.NAME]" are printed as written
# (rich markup would eat them) and flags show no "<bool>" metavar.
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Run a fleet of LLM agents over a queue of TOML tasks, through one shared gateway.")

RootOpt = Annotated[Path | None, typer.Option("-C", "--root", help="Fleet root (folder of fleet.toml). "
                                              "Default: $COORDINATOR_ROOT, else the current folder.",
                                              show_default=False)]
WATCH_EVERY_S = 1.0
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output with stable keys.")]


class Context:
    """Per-invocation options shared by every command."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def config(self):  # noqa: ANN201  (FleetConfig; imported lazily)
        """The fleet config, parsed once."""
        from .config import load_config  # noqa: PLC0415
        from .errors import ConfigError  # noqa: PLC0415

        try:
            config = load_config(self.root)
        except OSError as exc:  # fleet.toml is a folder or unreadable: one line, not a traceback
            raise ConfigError(f"cannot read it ({exc.strerror}); make it a readable TOML file",
                              path=exc.filename) from exc
        name = config.fleet.state_password_env
        if name is None:
            return config
        if name not in os.environ:
            raise ConfigError(f"{name} is not set; export the state store's password in it",
                              key="fleet.state_password_env")
        return config.with_state_password(os.environ[name])


def _print_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            typer.echo(f"coordinator {version('coordinator')}")
        except PackageNotFoundError:
            typer.echo("coordinator (not installed; run `pip install -e .`)")
        raise typer.Exit(0)


@app.callback()
def _main(ctx: typer.Context, root: RootOpt = None,
          version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                help="Print the version and exit.")] = False) -> None:
    ctx.obj = Context(root)


def _ctx(ctx: typer.Context, root: Path | None) -> Context:
    """A command-level ``-C`` overrides the global one."""
    return Context(root) if root is not None else ctx.obj


def require_agent(config: Any, name: str | None) -> None:
    """``--agent NAME``, when given, must name an ``[agents.NAME]`` table."""
    if name is not None:
        config.agent_named(name, key="--agent")


def one_shot() -> None:
    """Turn off the cyclic GC in a short-lived read command.

    Reading 10,000 tasks allocates ~100,000 acyclic objects, and the collector's
    passes over them cost ~0.1 s of a 0.5 s budget; the process exits right after.
    """
    import gc  # noqa: PLC0415

    gc.disable()


def print_json(data: Any) -> None:
    """Stable JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


@app.command()
def validate(ctx: typer.Context, paths: Annotated[list[Path] | None, typer.Argument(
        help="Task files or folders to check (within the fleet). Default: the whole tasks folder.")] = None,
        as_json: JsonOpt = False, root: RootOpt = None) -> None:
    """Check fleet.toml and task files; exit 2 if anything is invalid, naming file, line, field and fix.

    Every problem is reported in one pass. Warnings (a context pattern that matches
    no file yet, a shell script built from task text, a sandbox without bwrap) do
    not change the exit code.
    """
    from .tasks import load_paths, load_tasks  # noqa: PLC0415
    from .tasks.index import context_warnings  # noqa: PLC0415
    from .ui.validate import print_config_problems, print_validation  # noqa: PLC0415

    try:
        config = _ctx(ctx, root).config()
    except CoordinatorError as err:
        raise typer.Exit(print_config_problems(getattr(err, "problems", [err]), as_json=as_json)) from err
    from .runners import agent_warnings  # noqa: PLC0415
    from .tasks.graph import invalid_entry  # noqa: PLC0415

    taskset = load_paths(config, [p.resolve() for p in paths]) if paths else load_tasks(config)
    agents = [invalid_entry(str(config.config_path), message, key=key) for key, message in agent_warnings(config)]
    print_validation(taskset, agents + context_warnings(config, taskset), as_json=as_json)
    raise typer.Exit(2 if taskset.invalid else 0)


@app.command()
def schema() -> None:
    """Print the JSON Schema of a task file (for editors)."""
    from .tasks.schema import task_json_schema  # noqa: PLC0415

    print_json(task_json_schema())


@app.command()
def tasks(ctx: typer.Context, state: Annotated[str | None, typer.Option(
        help="Only tasks in this state: pending, blocked, running, done, failed, invalid, cancelled.")] = None,
        as_json: JsonOpt = False, root: RootOpt = None) -> None:
    """List tasks in priority order with their state (invalid files last)."""
    from .report.rows import STATES, snapshot  # noqa: PLC0415

    if state is not None and state not in STATES:
        raise typer.BadParameter(f"{state!r} is not one of {', '.join(STATES)}", param_hint="--state")
    one_shot()
    rows = [r for r in snapshot(_ctx(ctx, root).config()).rows if state is None or r.state == state]
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    from .ui.tables import task_table  # noqa: PLC0415

    task_table(rows)


@app.command()
def show(ctx: typer.Context, task_id: Annotated[str, typer.Argument(metavar="ID")], as_json: JsonOpt = False,
         root: RootOpt = None) -> None:
    """Show one task: its definition, state, attempts, usage and history (or why it is invalid)."""
    from .report.rows import task_detail as build_detail  # noqa: PLC0415
    from .ui.tables import task_detail  # noqa: PLC0415

    one_shot()
    data = build_detail(_ctx(ctx, root).config(), task_id)
    if as_json:
        print_json(data)
    else:
        task_detail(data)


@app.command()
def agent(ctx: typer.Context,
          agent_id: Annotated[str | None, typer.Option("--id", help="Agent id (default: agent-<pid>).")] = None,
          until_empty: Annotated[bool, typer.Option("--until-empty", help="Exit when nothing is left to run.")]
          = False,
          agent_name: Annotated[str | None, typer.Option("--agent", help="Run tasks that name no agent with "
                                                         "this [agents.NAME] instead of the default.")] = None,
          supervisor: Annotated[int | None, typer.Option(hidden=True, help="Pid of the `coordinator run` "
                                                         "that started this agent; stop if it dies.")] = None,
          root: RootOpt = None) -> None:
    """Run one agent process: claim tasks, run them, record the outcome."""
    import time  # noqa: PLC0415

    from .fleet.agent import Agent, default_agent_id  # noqa: PLC0415
    from .fleet.gitrepo import check_workspace  # noqa: PLC0415
    from .fleet.landing import require_one_host  # noqa: PLC0415

    config = _ctx(ctx, root).config()
    require_agent(config, agent_name)
    check_workspace(config)
    worker = Agent(config, agent_id or default_agent_id(), env=dict(os.environ), until_empty=until_empty,
                   agent_override=agent_name, supervisor_pid=supervisor)
    require_one_host(config, worker.store, time.time())
    raise typer.Exit(worker.run())


@app.command()
def gateway(ctx: typer.Context, port: Annotated[int | None, typer.Option(
        help="Port on 127.0.0.1 (default: [gateway].port, 0 = any free port).")] = None,
        root: RootOpt = None) -> None:
    """Serve the shared inference gateway until Ctrl-C; writes .coordinator/gateway.json."""
    from .fleet.keeper import require_no_gateway  # noqa: PLC0415
    from .gateway.server import serve_forever  # noqa: PLC0415

    config = _ctx(ctx, root).config()
    require_no_gateway(config)
    serve_forever(config, dict(os.environ), port=port,
                  on_ready=lambda gw: typer.echo(f"gateway listening on {gw.url} "
                                                 f"(url and token in {config.state_dir / 'gateway.json'})"))


@app.command()
def run(ctx: typer.Context,
        agents: Annotated[int | None, typer.Option("-n", "--agents", min=1, max=256,
                                                   help="Agent processes (default: [fleet].agents).")] = None,
        until_empty: Annotated[bool | None, typer.Option("--until-empty/--watch", help="Exit when nothing is "
                                                         "left to run, or keep watching tasks/ for new files. "
                                                         "Default: --until-empty when stdin is not a terminal.",
                                                         show_default=False)] = None,
        agent_name: Annotated[str | None, typer.Option("--agent", help="Run tasks that name no agent with this "
                                                       "[agents.NAME].")] = None,
        no_dashboard: Annotated[bool, typer.Option("--no-dashboard", help="Plain progress lines instead of "
                                                   "the live view.")] = False,
        root: RootOpt = None) -> None:
    """Start the gateway and N agents; work through tasks/.

    Exit 0 when every task is done; 1 when any failed, is blocked or invalid (or is
    left pending); 2 for bad input; 130 after Ctrl-C.
    """
    import time  # noqa: PLC0415

    from .fleet.gitrepo import check_workspace  # noqa: PLC0415
    from .fleet.landing import require_one_host  # noqa: PLC0415
    from .fleet.supervisor import FleetOptions, run_fleet  # noqa: PLC0415
    from .store import open_store  # noqa: PLC0415

    config = _ctx(ctx, root).config()
    require_agent(config, agent_name)
    check_workspace(config)
    if config.workspace.mode == "worktree":
        require_one_host(config, open_store(config), time.time())
    options = FleetOptions(agents=agents or config.fleet.agents,
                           until_empty=until_empty if until_empty is not None else not sys.stdin.isatty(),
                           agent_override=agent_name, env=dict(os.environ))
    live = not no_dashboard and sys.stdout.isatty()

    def make_display() -> Any:  # rich is imported only once the first agent is booting (fleet/supervisor.py)
        from .ui.live import FleetDisplay  # noqa: PLC0415

        return FleetDisplay(config, live=live, watching=not options.until_empty and sys.stdout.isatty())

    raise typer.Exit(run_fleet(config, options, make_display))


@app.command()
def status(ctx: typer.Context, as_json: JsonOpt = False,
           watch: Annotated[bool, typer.Option("--watch", help="Refresh every second until Ctrl-C (into a pipe: "
                                               "a snapshot, or a JSON line with --json, every second).")] = False,
           check: Annotated[bool, typer.Option("--check", help="Exit 1 if the fleet is unhealthy (dead agents, "
                                               "stale claims, invalid files, unreachable gateway).")] = False,
           root: RootOpt = None) -> None:
    """Fleet health: queue, agents, gateway savings, stale claims, invalid files, paused."""
    import time  # noqa: PLC0415

    from .report.status import build_status  # noqa: PLC0415
    from .ui.tables import print_status  # noqa: PLC0415

    config = _ctx(ctx, root).config()
    if watch:
        from .ui.live import watch_status  # noqa: PLC0415

        watch_status(lambda: build_status(config, time.time()), WATCH_EVERY_S, as_json=as_json)
        return
    one_shot()
    report = build_status(config, time.time())
    if as_json:
        print_json(report)
    else:
        print_status(report)
    raise typer.Exit(1 if check and not report["healthy"] else 0)


@app.command()
def logs(ctx: typer.Context, task_id: Annotated[str, typer.Argument(metavar="ID")],
         follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing while the task runs.")] = False,
         stderr: Annotated[bool, typer.Option("--stderr", help="Show stderr.log instead of stdout.log.")] = False,
         acceptance: Annotated[bool, typer.Option("--acceptance", help="Show acceptance.log: the output of the "
                                                  "task's acceptance command.")] = False,
         run: Annotated[int | None, typer.Option("--run", help="Which run folder, runs/ID/N, N being its "
                                                 "claim's epoch (default: the latest).")] = None,
         root: RootOpt = None) -> None:
    """Print a task's output log (the streamed tokens, or a command's stdout)."""
    from .report.logs import is_waiting_for_fleet, log_chunks  # noqa: PLC0415

    config = _ctx(ctx, root).config()
    stream = "acceptance" if acceptance else "stderr" if stderr else "stdout"
    chunks = log_chunks(config, task_id, follow=follow, stream=stream, run=run)  # unknown id or run: exit 2
    if follow and is_waiting_for_fleet(config, task_id):
        typer.echo(f"waiting for a fleet to run {task_id} (start one with `coordinator run`); Ctrl-C to stop",
                   err=True)
    for chunk in chunks:
        sys.stdout.write(chunk)
        sys.stdout.flush()


@app.command()
def gc(ctx: typer.Context, dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; "
                                                                "change nothing.")] = False,
       as_json: JsonOpt = False, root: RootOpt = None) -> None:
    """Remove orphaned worktrees (salvaging their work first) and landed branches, then prune."""
    from .fleet.gc import collect  # noqa: PLC0415
    from .fleet.gitrepo import check_workspace  # noqa: PLC0415
    from .store import open_store  # noqa: PLC0415

    config = _ctx(ctx, root).config()
    if config.workspace.mode != "worktree":
        raise typer.Exit(0)  # shared mode makes no worktrees: nothing to collect
    check_workspace(config)
    report = collect(config, open_store(config), dry_run=dry_run)
    if as_json:
        print_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    for path in report["removed"]:
        typer.echo(f"{verb} {path}")
    for item in report["salvaged"]:
        typer.echo(f"salvaged {item['task']} (epoch {item['epoch']}) to {item['ref']}")
    for branch in report["branches_deleted"]:
        typer.echo(f"{'would delete' if dry_run else 'deleted'} branch {branch}")
    for spare in report["spares_removed"]:
        typer.echo(f"{verb} spare worktree {spare}")


@app.command()
def init(directory: Annotated[Path, typer.Argument(help="Folder to make a fleet root.")] = Path("."),
         force: Annotated[bool, typer.Option("--force", help="Overwrite an existing fleet.toml.")] = False) -> None:
    """Write a commented fleet.toml, three example tasks, and a .gitignore entry for .coordinator/."""
    from .scaffold import init_fleet  # noqa: PLC0415

    for path in init_fleet(directory, force=force):
        typer.echo(f"wrote {path}")
    typer.echo(f"next: coordinator -C {directory} run")


# The commands that change the queue, and those about fleet.toml, live beside this module; importing registers them.
from . import cli_config, cli_queue  # noqa: E402, F401
from . import cli_serve  # noqa: E402, F401  (`coordinator ui`)
from . import cli_mcp  # noqa: E402, F401  (`coordinator mcp`, DESIGN §11)


def _help_command() -> str:
    """``coordinator CMD --help`` for the command being run, else ``coordinator --help``."""
    names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    command = next((arg for arg in sys.argv[1:] if arg in names), None)
    return f"coordinator {command} --help" if command else "coordinator --help"


def main() -> None:
    """Console-script entry point: every error, ours or a usage error, is one line and exit 1 or 2."""
    try:
        code = app(standalone_mode=False)  # returns the exit code instead of calling sys.exit
    except CoordinatorError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except typer.TyperException as err:  # bad option, missing argument: Typer would draw a multi-line box
        if err.format_message():  # empty for a bare `coordinator`, which has printed the help already
            typer.echo(f"error: {err.format_message()} (see `{_help_command()}`)", err=True)
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`| head`): nothing left to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    sys.exit(code if isinstance(code, int) else 0)
