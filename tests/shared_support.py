"""Helpers for the tests of gateways on several hosts: two fleet roots on one Redis and one fake upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.config import load_config
from coordinator.gateway.server import GatewayHandle, start_in_thread
from tests.fake_upstream import FakeUpstream
from tests.gateway_support import ENV, fleet_toml
from tests.redis_support import RedisServer

HOSTS = ("host-a", "host-b")


def shared_fleet_toml(upstream_url: str, redis_url: str, state_name: str, **options: Any) -> str:
    """A fleet.toml for one host: its state in ``redis_url`` under ``state_name``, backends at the fake."""
    fleet = {"state": redis_url, "state_name": state_name, **options.pop("fleet", {})}
    return fleet_toml(upstream_url, fleet=fleet, **options)


def blocked_readers(server: RedisServer) -> int:
    """Redis clients blocked in a read right now (followers waiting on a leader's stream)."""
    return sum(1 for client in server.client().client_list() if "b" in client["flags"])


@pytest.fixture
def two_gateways(redis_server: RedisServer, make_fleet: Callable[..., Path],
                 fake_upstream: FakeUpstream) -> Iterator[Callable[..., tuple[GatewayHandle, GatewayHandle]]]:
    """``two_gateways(**fleet_toml options)`` → gateways of two "hosts" sharing one Redis and the fake upstream."""
    redis_server.flush()
    handles: list[GatewayHandle] = []

    def start(**options: Any) -> tuple[GatewayHandle, GatewayHandle]:
        for host in HOSTS:
            root = make_fleet(shared_fleet_toml(fake_upstream.url, redis_server.url, "shared", **options), name=host)
            handles.append(start_in_thread(load_config(root), ENV))
        return handles[-2], handles[-1]

    yield start
    for handle in handles:
        handle.stop()
