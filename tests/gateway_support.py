"""Helpers for the gateway tests: a fleet.toml pointing at the fake upstream, and a running gateway."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.config import load_config
from coordinator.gateway.server import GatewayHandle, start_in_thread
from tests.fake_upstream import FakeUpstream

# Recognisable fake keys: the secrets test greps every state file and log line for them.
ANTHROPIC_KEY = "sk-ant-api03-SECRET-do-not-leak-4f1c2e"
OPENAI_KEY = "sk-proj-SECRET-do-not-leak-9a8b7c"
ENV = {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "OPENAI_API_KEY": OPENAI_KEY}

# Short retry, backoff and breaker settings so fault tests take milliseconds.
BACKEND_DEFAULTS = {"max_retries": 2, "retry_base_s": 0.001, "retry_max_s": 5.0, "breaker_failures": 50,
                    "breaker_open_s": 30.0, "timeout_s": 5.0}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _table(name: str, values: dict[str, Any]) -> str:
    lines = [f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def fleet_toml(upstream_url: str | list[str], *, fleet: dict[str, Any] | None = None,
               gateway: dict[str, Any] | None = None, anthropic: dict[str, Any] | None = None,
               openai: dict[str, Any] | None = None) -> str:
    """A fleet.toml: backend ``default`` (anthropic) and ``oai`` (openai), both at the fake upstream."""
    parts = [
        _table("fleet", fleet or {}),
        _table("gateway", gateway or {}),
        _table("backends.default", {"kind": "anthropic", "base_url": upstream_url, **BACKEND_DEFAULTS,
                                    **(anthropic or {})}),
        _table("backends.oai", {"kind": "openai", "base_url": upstream_url, **BACKEND_DEFAULTS, **(openai or {})}),
        textwrap.dedent("""\
            [models]
            default = { backend = "default", model = "claude-sonnet-4-6" }
            gpt-4o-mini = { backend = "oai", model = "gpt-4o-mini" }
            """),
    ]
    return "\n".join(parts)


GatewayFactory = Callable[..., GatewayHandle]


@pytest.fixture
def start_gateway(make_fleet: Callable[..., Path], fake_upstream: FakeUpstream) -> Iterator[GatewayFactory]:
    """``start_gateway(**fleet_toml options, clock=..., env=...)`` → a running gateway, stopped afterwards."""
    handles: list[GatewayHandle] = []

    def start(*, upstream_url: str | list[str] | None = None, env: dict[str, str] | None = None,
              name: str = "fleet", **options: Any) -> GatewayHandle:
        gateway_options = {k: options.pop(k) for k in ("clock", "rand") if k in options}
        root = make_fleet(fleet_toml(upstream_url or fake_upstream.url, **options), name=name)
        handle = start_in_thread(load_config(root), ENV if env is None else env, **gateway_options)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


def user(text: str) -> list[dict[str, str]]:
    """A one-message conversation."""
    return [{"role": "user", "content": text}]
