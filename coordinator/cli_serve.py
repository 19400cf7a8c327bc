"""``coordinator ui``: a one-time link that signs a browser in to the running server's web dashboard.

Registered on the one Typer app of ``cli.py`` (which imports this module). The
link comes from the server itself (``POST /v1/coordinator/login-codes`` with the
fleet token from gateway.json; ``serve/sessions.py`` says why), so standard
library HTTP is enough and the command starts fast.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer

from .cli import RootOpt, _ctx, app
from .errors import NoGatewayError

LOGIN_CODES = "/v1/coordinator/login-codes"
TIMEOUT_S = 10.0


@app.command()
def ui(ctx: typer.Context,
       open_browser: Annotated[bool, typer.Option("--open", help="Also open the link in the default browser.")]
       = False, root: RootOpt = None) -> None:
    """Print a one-time link to the web dashboard (/ui/) of the fleet's running gateway."""
    from .gateway.client import read_gateway  # noqa: PLC0415

    config = _ctx(ctx, root).config()
    info = read_gateway(config)
    if info is None:
        raise NoGatewayError(config.root)
    link = login_link(info.url, info.token, config.root)
    typer.echo(link["url"])
    typer.echo(f"(the link works once, within {link['expires_in_s']:.0f} s)", err=True)
    if open_browser:
        import webbrowser  # noqa: PLC0415

        if not webbrowser.open(link["url"]):
            typer.echo("could not start a browser; open the link above in one", err=True)


def login_link(url: str, token: str, root: Any) -> dict[str, Any]:
    """``{"url", "code", "expires_in_s"}`` minted by the gateway at ``url``; NoGatewayError if it does not answer."""
    request = urllib.request.Request(url + LOGIN_CODES, data=b"", method="POST",
                                     headers={"authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise NoGatewayError(root, url, f"HTTP {exc.code} from {LOGIN_CODES}") from exc
    except (OSError, ValueError) as exc:
        raise NoGatewayError(root, url, str(getattr(exc, "reason", exc))) from exc
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        raise NoGatewayError(root, url, f"{LOGIN_CODES} sent no link")
    return data
