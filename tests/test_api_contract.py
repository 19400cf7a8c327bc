"""The API's contract and fan-out: a valid OpenAPI 3.1 document, schemathesis over every route, one tailer for all."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)

from coordinator.config import load_config
from coordinator.gateway.server import GatewayHandle, start_in_thread
from coordinator.serve.api import ROUTES
from coordinator.store.file import FileStore
from tests.api_support import API, wait_until, write_echo_fleet

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
CLIENTS = 200


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[GatewayHandle, dict[str, str]]]:
    root = write_echo_fleet(tmp_path / "fleet")
    handle = start_in_thread(load_config(root), {}, port=0)
    auth = {"authorization": f"Bearer {handle.token}"}
    for n in range(3):  # something to list, show and stream
        httpx.post(f"{handle.url}{API}/tasks", headers=auth, json={"id": f"t{n}", "prompt": f"task {n}"})
    try:
        yield handle, auth
    finally:
        handle.stop()


def test_the_openapi_document_is_valid_and_covers_every_route(server: Any) -> None:
    handle, auth = server
    document = httpx.get(f"{handle.url}{API}/openapi.json", headers=auth).json()
    validate(document)  # raises on an invalid OpenAPI 3.1 document
    assert document["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert documented == {(r.method, API + r.path) for r in ROUTES}


def test_schemathesis_finds_no_server_error_and_no_schema_break(server: Any) -> None:
    handle, auth = server
    served = httpx.get(f"{handle.url}{API}/openapi.json", headers=auth).json()
    schema = schemathesis.openapi.from_dict(served)  # from_url leaves out the document's own route
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(ROUTES)
    for operation in operations:
        streaming = operation.path.endswith("events")

        @settings(max_examples=30, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            if streaming:  # following never ends: schemathesis checks what there is (test_api_fleet follows)
                case.query = {**(case.query or {}), "follow": "false"}
            response = case.call(base_url=handle.url, headers=auth, timeout=30)
            case.validate_response(response, checks=CHECKS)

        check()


async def _open(url: str, path: str, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    await reader.readuntil(b": stream open\n\n")
    return reader, writer


async def _read_until(reader: asyncio.StreamReader, needle: bytes) -> bytes:
    data = b""
    while needle not in data:
        chunk = await asyncio.wait_for(reader.read(65536), 30)
        assert chunk, "the stream closed early"
        data += chunk
    return data


def test_200_stream_clients_are_served_by_one_tailer(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    handle, auth = server
    readers: list[tuple[str, str | None]] = []
    original = FileStore.read_events

    def counting(self: FileStore, cursor: int = 0) -> Any:
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        readers.append((threading.current_thread().name, task.get_name() if task else None))
        return original(self, cursor)

    monkeypatch.setattr(FileStore, "read_events", counting)
    api = handle.gateway.api
    assert api is not None

    async def scenario() -> None:
        half = CLIENTS // 2
        fleet = [await _open(handle.url, f"{API}/events", handle.token) for _ in range(half)]
        task = [await _open(handle.url, f"{API}/tasks/t0/events", handle.token) for _ in range(half)]
        await asyncio.to_thread(wait_until, lambda: handle.call(lambda: api.tailer.subscribers) == CLIENTS)
        for _, writer in fleet[:25] + task[:25]:  # hang up on a quarter: nothing is cancelled
            writer.close()
        await asyncio.to_thread(wait_until, lambda: handle.call(lambda: api.tailer.subscribers) == CLIENTS - 50)
        cancelled = await asyncio.to_thread(httpx.post, f"{handle.url}{API}/tasks/t0/cancel", headers=auth)
        assert cancelled.status_code == 200
        got = await asyncio.gather(*(_read_until(r, b'"event":"cancelled"') for r, _ in fleet[25:]),
                                   *(_read_until(r, b'event: end') for r, _ in task[25:]))
        assert all(b'"task":"t0"' in data for data in got[:half - 25])
        assert all(b'data: {"state":"cancelled"}' in data for data in got[half - 25:])
        for _, writer in fleet[25:] + task[25:]:
            writer.close()

    asyncio.run(scenario())
    assert set(readers) == {("coordinator-gateway", "coordinator-api-tailer")}, "one reader of the feed"
    assert httpx.get(f"{handle.url}{API}/tasks/t1", headers=auth).json()["state"] == "pending", \
        "hanging up cancelled nothing"
