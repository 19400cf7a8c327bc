"""Helpers for routing, fallback, downgrade and reload tests: fleet.toml with any backends, aliases and rules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.config import load_config
from coordinator.gateway.server import GatewayHandle, start_in_thread
from tests.fake_upstream import FakeUpstream
from tests.gateway_support import BACKEND_DEFAULTS, ENV, _table, _toml_value

# Explicit prices per MTok, so budgets and downgrades do not depend on the default price table.
STRONG = {"input_usd_per_mtok": 15.0, "output_usd_per_mtok": 75.0}
CHEAP = {"input_usd_per_mtok": 0.25, "output_usd_per_mtok": 1.25}


def _inline(values: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in values.items()) + " }"


def routing_toml(backends: dict[str, dict[str, Any]], models: dict[str, dict[str, Any]],
                 rules: list[dict[str, Any]] | None = None, tables: dict[str, dict[str, Any]] | None = None) -> str:
    """fleet.toml: other ``tables`` ("fleet", "agents.claude", ...), anthropic backends (fast retries, see
    BACKEND_DEFAULTS), aliases and [[routing]] tables."""
    parts = [_table(name, values) for name, values in (tables or {}).items()]
    parts += [_table(f"backends.{name}", {"kind": "anthropic", **BACKEND_DEFAULTS, **values})
              for name, values in backends.items()]
    parts.append("[models]\n" + "".join(f"{name} = {_inline(values)}\n" for name, values in models.items()))
    parts += [_table("[routing]", rule) for rule in rules or []]
    return "\n".join(parts)


RoutedFactory = Callable[..., GatewayHandle]


@pytest.fixture
def second_upstream() -> Iterator[FakeUpstream]:
    """Another fake upstream on a port of its own (a fallback backend, or the new base_url of a reload)."""
    fake = FakeUpstream().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def routed_gateway(make_fleet: Callable[..., Path]) -> Iterator[RoutedFactory]:
    """``routed_gateway(toml, tasks=..., **gateway options)`` → a running gateway on that fleet.toml."""
    handles: list[GatewayHandle] = []

    def start(toml: str, *, tasks: dict[str, str] | None = None, **options: Any) -> GatewayHandle:
        handle = start_in_thread(load_config(make_fleet(toml, tasks=tasks)), ENV, **options)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


def ask(gw: GatewayHandle, token: str, text: str = "hello", *, model: str = "default", max_tokens: int = 64,
        stream: bool = False, **extra: Any) -> httpx.Response:
    """One Messages request with ``token``, as httpx sees it (status, headers, body)."""
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}],
            "stream": stream, **extra}
    return httpx.post(f"{gw.url}/v1/messages", json=body, timeout=30,
                      headers={"x-api-key": token, "anthropic-version": "2023-06-01"})
