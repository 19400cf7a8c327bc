"""Inference backends behind one small surface (``Backend``), built by ``make_backend``.

Kinds: ``anthropic`` (the official SDK), ``openai`` (any OpenAI-compatible server,
over aiohttp), ``echo`` (offline). The modules that import an SDK or an HTTP client
load inside ``make_backend`` only, so importing this package stays cheap.

API keys come only from the ``env`` mapping the caller passes: ``api_key_env``
names the variable (defaults below). Keys are handed to the client and never
logged or kept anywhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ..config import BackendConfig
from ..errors import ConfigError
from .base import Backend, UpstreamRequest, UpstreamResponse

__all__ = ["DEFAULT_KEY_ENV", "Backend", "UpstreamRequest", "UpstreamResponse", "auto_kind", "key_env",
           "make_backend"]

log = logging.getLogger(__name__)

DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


def auto_kind(config: BackendConfig, env: Mapping[str, str]) -> str:
    """The concrete kind: ``auto`` is anthropic with ANTHROPIC_API_KEY, else openai with OPENAI_API_KEY, else echo."""
    if config.kind != "auto":
        return config.kind
    for kind in ("anthropic", "openai"):
        if env.get(DEFAULT_KEY_ENV[kind]):
            return kind
    return "echo"


def key_env(config: BackendConfig, kind: str) -> str:
    """The variable holding the key for ``kind``; "" means the server needs none (local servers)."""
    if config.api_key_env is not None:
        return config.api_key_env
    return DEFAULT_KEY_ENV.get(kind, "")


def make_backend(name: str, config: BackendConfig, env: Mapping[str, str]) -> Backend:
    """Build the backend ``[backends.NAME]`` describes; ConfigError if its key is missing."""
    kind = auto_kind(config, env)
    if kind == "echo":
        if config.kind == "auto":
            log.warning("backend %r: neither ANTHROPIC_API_KEY nor OPENAI_API_KEY is set; using the offline "
                        "echo backend (set one, or kind = \"echo\" in fleet.toml to silence this)", name)
        from .echo import EchoBackend

        return EchoBackend(name, config)
    variable = key_env(config, kind)
    api_key = env.get(variable) if variable else None
    if variable and not api_key:
        raise ConfigError(f"backend {name!r} ({kind}) needs an API key: set ${variable}, or name the variable "
                          f"holding it with api_key_env (api_key_env = \"\" for a local server that needs none)",
                          key=f"backends.{name}.api_key_env")
    if kind == "anthropic":
        from .anthropic import AnthropicBackend

        # A local server may need no key, but the SDK would then look in os.environ: give it a dummy.
        return AnthropicBackend(name, config, api_key=api_key or "no-key", key_env=variable or None)
    from .openai import OpenAIBackend

    return OpenAIBackend(name, config, api_key=api_key, key_env=variable or None)
