"""The commands about fleet.toml as the running fleet sees it: ``route`` and ``reload``.

Registered on the one Typer app of ``cli.py`` (which imports this module).
``route`` renders ``report/route.py``; ``reload`` asks the running gateway to
re-read fleet.toml (``POST /v1/coordinator/config/reload``, docs/gateway.md).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from .cli import JsonOpt, RootOpt, _ctx, app, print_json



@app.command()
def route(ctx: typer.Context, task_id: Annotated[str, typer.Option("--task", metavar="ID", help="The task whose "
                                                                   "request to route.")],
          model: Annotated[str | None, typer.Option(help="The model the request names (default: the task's, "
                                                    "else its agent's).")] = None,
          input_tokens: Annotated[int | None, typer.Option("--input-tokens", min=0, help="The request's input "
                                                           "tokens (default: estimated from what the agent "
                                                           "sends).")] = None,
          as_json: JsonOpt = False, root: RootOpt = None) -> None:
    """Explain which [[routing]] rule and alias a request from a task gets, and why (budget, fallbacks)."""
    from .report.route import route_report  # noqa: PLC0415

    report = route_report(_ctx(ctx, root).config(), task_id, dict(os.environ), model=model,
                          input_tokens=input_tokens)
    if as_json:
        print_json(report)
    else:
        head = f"{report['task']} → {report['alias']} ({report['backend']}: {report['model']})" \
            if report["alias"] else f"{report['task']} → refused (402): {report['refused']}"
        typer.echo(head)
        typer.echo(f"  ~{report['input_tokens']} input tokens, from {report['estimated_from']}")
        for line in report["why"]:
            typer.echo(f"  {line}")
    raise typer.Exit(0 if report["alias"] else 1)


@app.command()
def reload(ctx: typer.Context, as_json: JsonOpt = False, root: RootOpt = None) -> None:
    """Make the running gateway re-read fleet.toml now (it also notices changes by itself within a second)."""
    from .errors import NoGatewayError  # noqa: PLC0415
    from .gateway.client import read_gateway  # noqa: PLC0415

    config = _ctx(ctx, root).config()  # an invalid file stops here, with its one-line error (exit 2)
    gateway = read_gateway(config)
    if gateway is None:
        typer.echo("no gateway is running; fleet.toml is valid (agents and the next gateway read it at start)")
        raise typer.Exit(0)
    try:
        status, data = gateway.reload()
    except OSError as exc:
        raise NoGatewayError(config.root, gateway.url, str(exc)) from exc
    if as_json:
        print_json(data)
    elif status == 200:
        changed = ", ".join(data.get("changed") or []) or "nothing changed"
        typer.echo(f"reloaded: generation {data['generation']} ({changed})")
        for key in data.get("restart_needed") or []:
            typer.echo(f"  {key} changed: it takes effect when the gateway restarts", err=True)
    else:
        typer.echo(f"error: {data.get('error', {}).get('message', data)}", err=True)
    raise typer.Exit(0 if status == 200 else 2)
