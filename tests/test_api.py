"""The task API's requests and refusals, against a gateway on a thread (no agents: files are the truth)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from coordinator.config import load_config
from coordinator.gateway.server import GatewayHandle, start_in_thread
from coordinator.gateway.tokens import task_token
from coordinator.serve.api import PREFIX, ROUTES
from tests.api_support import API, RawSSE, write_echo_fleet
from tests.procs import run_cli


def serve(root: Path) -> GatewayHandle:
    return start_in_thread(load_config(root), {}, port=0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[GatewayHandle, httpx.Client, Path]]:
    root = write_echo_fleet(tmp_path / "fleet")
    handle = serve(root)
    client = httpx.Client(base_url=handle.url, headers={"authorization": f"Bearer {handle.token}"}, timeout=30)
    try:
        yield handle, client, root
    finally:
        client.close()
        handle.stop()


def _path(route_path: str) -> str:
    return PREFIX + route_path.replace("{task_id}", "a")


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_route_needs_a_token(server: Any, route: Any) -> None:
    handle, _, _ = server
    for headers in ({}, {"authorization": "Bearer cgf-not-the-token"}):
        response = httpx.request(route.method, handle.url + _path(route.path), headers=headers, json={})
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "unauthorized"


def test_a_foreign_host_header_is_refused(server: Any) -> None:
    handle, client, _ = server
    for host in ("evil.example:80", "127.0.0.1", f"attacker.test:{handle.url.rsplit(':', 1)[1]}"):
        response = client.get(f"{API}/status", headers={"host": host})
        assert response.status_code == 403 and response.json()["error"]["type"] == "bad_host"
    port = handle.url.rsplit(":", 1)[1]
    assert client.get(f"{API}/tasks", headers={"host": f"localhost:{port}"}).status_code == 200


def test_a_task_token_reads_its_own_task_only_and_changes_nothing(server: Any) -> None:
    handle, client, _ = server
    for task_id in ("a", "b"):
        assert client.post(f"{API}/tasks", json={"id": task_id, "prompt": f"task {task_id}"}).status_code == 202
    own = {"authorization": f"Bearer {task_token(handle.token, 'a')}"}
    assert httpx.get(f"{handle.url}{API}/tasks/a", headers=own).json()["state"] == "pending"
    for method, path in (("GET", "/tasks/b"), ("GET", "/tasks/b/events"), ("GET", "/tasks"), ("GET", "/status"),
                         ("GET", "/events"), ("POST", "/tasks/a/cancel"), ("POST", "/tasks/a/retry"),
                         ("POST", "/tasks")):
        response = httpx.request(method, handle.url + API + path, headers=own, json={"prompt": "x"})
        assert response.status_code == 403, (method, path)
        assert response.json()["error"]["type"] == "forbidden"
    reader = RawSSE(handle.url, f"{API}/tasks/a/events?follow=false", task_token(handle.token, "a"))
    assert reader.status == 200 and next(reader.frames())["data"] == {"state": "pending"}


BAD_FIELDS = {
    "priority": -1, "max_attempts": 0, "timeout_s": -5, "acceptance": "pytest -q", "depends_on": ["not an id"],
    "agent": "nobody", "workdir": "../outside", "context": ["../../etc/*"], "vars": {"name": [1, 2]},
    "labels": "one", "use_dependency_outputs": "yes", "promt": "typo",
}


def test_each_bad_field_is_400_with_validates_message(server: Any, tmp_path: Path) -> None:
    _, client, root = server
    shadow = write_echo_fleet(tmp_path / "shadow")  # the same fleet.toml: validate judges the files the API would write
    for n, (key, value) in enumerate(BAD_FIELDS.items()):
        (shadow / "tasks" / f"bad{n}.toml").write_text(tomli_w.dumps({"prompt": f"bad {key}", key: value}))
    report = json.loads(run_cli(shadow, "validate", "--json").stdout)
    expected = {bad["id"]: bad for bad in report["invalid"]}
    assert len(expected) == len(BAD_FIELDS)
    for n, (key, value) in enumerate(BAD_FIELDS.items()):
        response = client.post(f"{API}/tasks", json={"id": f"bad{n}", "prompt": f"bad {key}", key: value})
        assert response.status_code == 400, key
        error = response.json()["error"]
        assert error["type"] == "invalid_task"
        assert error["message"] == expected[f"bad{n}"]["error"].replace(str(shadow), str(root)), key
        assert error["field"] == expected[f"bad{n}"]["field"] and error["field"].startswith(key), key
    assert not list((root / "tasks").iterdir()), "nothing invalid is written"


def test_a_batch_names_the_bad_task_and_writes_nothing(server: Any) -> None:
    _, client, root = server
    response = client.post(f"{API}/tasks", json={"tasks": [{"id": "ok", "prompt": "fine"},
                                                            {"id": "no", "prompt": "bad", "priority": "urgent"}]})
    assert response.status_code == 400 and response.json()["error"]["field"] == "tasks[1].priority"
    assert not list((root / "tasks").iterdir())
    response = client.post(f"{API}/tasks", json={"tasks": [{"id": "one", "prompt": "1"},
                                                            {"id": "two", "prompt": "2", "depends_on": ["one"]}]})
    assert response.status_code == 202
    assert [t["task_id"] for t in response.json()["tasks"]] == ["one", "two"]
    assert (root / "tasks" / "two.toml").read_text() == 'prompt = "2"\ndepends_on = [\n    "one",\n]\n'


def test_duplicate_id_is_409_and_an_identical_resubmit_200(server: Any) -> None:
    _, client, root = server
    body = {"id": "once", "prompt": "do it once", "priority": "high", "labels": ["x"]}
    first = client.post(f"{API}/tasks", json=body)
    assert first.status_code == 202
    assert first.json() == {"task_id": "once", "state": "pending", "queue_position": 1, "links": {
        "self": f"{API}/tasks/once", "events": f"{API}/tasks/once/events", "cancel": f"{API}/tasks/once/cancel",
        "retry": f"{API}/tasks/once/retry"}}
    again = client.post(f"{API}/tasks", json=body)
    assert again.status_code == 200 and again.json() == first.json()
    other = client.post(f"{API}/tasks", json={**body, "prompt": "something else"})
    assert other.status_code == 409 and other.json()["error"]["type"] == "conflict"
    assert "once" in other.json()["error"]["message"]
    assert client.post(f"{API}/tasks", json={"prompt": "no id given"}).json()["task_id"] == "no-id-given"
    assert sorted(p.name for p in (root / "tasks").iterdir()) == ["no-id-given.toml", "once.toml"]


def test_max_pending_refuses_new_tasks_with_429(tmp_path: Path) -> None:
    root = write_echo_fleet(tmp_path / "fleet")
    toml = (root / "fleet.toml").read_text().replace("retry_backoff_s = 0", "retry_backoff_s = 0\nmax_pending = 1")
    (root / "fleet.toml").write_text(toml)
    handle = serve(root)
    try:
        client = httpx.Client(base_url=handle.url, headers={"authorization": f"Bearer {handle.token}"})
        assert client.post(f"{API}/tasks", json={"id": "a", "prompt": "a"}).status_code == 202
        refused = client.post(f"{API}/tasks", json={"id": "b", "prompt": "b"})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"]["type"] == "queue_full"
        assert refused.json()["error"]["policy"] == {"max_pending": 1, "waiting": 1}
        assert client.post(f"{API}/tasks", json={"id": "a", "prompt": "a"}).status_code == 200, "resubmits pass"
        assert client.post(f"{API}/tasks/a/cancel").status_code == 200
        assert client.post(f"{API}/tasks", json={"id": "b", "prompt": "b"}).status_code == 202
    finally:
        handle.stop()


def test_a_spent_fleet_budget_refuses_new_tasks_with_429(tmp_path: Path) -> None:
    root = write_echo_fleet(tmp_path / "fleet")
    toml = (root / "fleet.toml").read_text().replace("retry_backoff_s = 0", "retry_backoff_s = 0\nmax_usd = 0.5")
    (root / "fleet.toml").write_text(toml)
    handle = serve(root)
    try:
        client = httpx.Client(base_url=handle.url, headers={"authorization": f"Bearer {handle.token}"})
        assert client.post(f"{API}/tasks", json={"id": "a", "prompt": "a"}).status_code == 202
        handle.call(lambda: handle.gateway.ledger.totals.__setitem__("usd", 0.5))
        refused = client.post(f"{API}/tasks", json={"id": "b", "prompt": "b"})
        assert refused.status_code == 429 and "retry-after" in refused.headers
        assert refused.json()["error"]["type"] == "budget_exhausted"
        assert refused.json()["error"]["policy"] == {"max_usd": 0.5}
    finally:
        handle.stop()


def test_listing_pages_and_filters(server: Any) -> None:
    _, client, _ = server
    for n in range(5):
        client.post(f"{API}/tasks", json={"id": f"t{n}", "prompt": f"task {n}"})
    client.post(f"{API}/tasks/t3/cancel")
    seen, cursor = [], None
    while True:
        page = client.get(f"{API}/tasks", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [row["id"] for row in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"t{n}" for n in range(5)] and len(seen) == 5
    assert [r["id"] for r in client.get(f"{API}/tasks", params={"state": "cancelled"}).json()["tasks"]] == ["t3"]
    for params in ({"state": "sleeping"}, {"limit": 0}, {"limit": "x"}, {"cursor": "-1"}):
        response = client.get(f"{API}/tasks", params=params)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request"


def test_cancel_and_retry_follow_the_state_table(server: Any) -> None:
    _, client, _ = server
    client.post(f"{API}/tasks", json={"id": "c", "prompt": "c"})
    assert client.post(f"{API}/tasks/c/retry").status_code == 409, "a pending task cannot be retried"
    assert client.post(f"{API}/tasks/c/cancel").json() == {"task_id": "c", "state": "cancelled"}
    assert client.post(f"{API}/tasks/c/cancel").status_code == 409
    assert client.post(f"{API}/tasks/c/retry").json() == {"task_id": "c", "state": "pending"}
    for path in ("/tasks/nope", "/tasks/nope/events"):
        assert client.get(API + path).status_code == 404
    for action in ("cancel", "retry"):
        missing = client.post(f"{API}/tasks/nope/{action}")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"


def test_streams_send_keepalives_and_reject_foreign_ids(server: Any) -> None:
    handle, client, _ = server
    client.post(f"{API}/tasks", json={"id": "k", "prompt": "k"})
    handle.call(lambda: setattr(handle.gateway.api.streams, "keepalive_s", 0.05))
    reader = RawSSE(handle.url, f"{API}/tasks/k/events", handle.token)
    first = next(reader.frames())
    assert first["event"] == "state" and first["data"] == {"state": "pending"}
    reader.sock.settimeout(10)
    while "keep-alive" not in reader.comments:
        reader.buffer += reader.sock.recv(65536)
        list(_complete_frames(reader))
    reader.close()
    for bad in ("garbage", "1.2.3", "999999.-1.0.0.0.pending.live"):
        response = client.get(f"{API}/tasks/k/events", headers={"last-event-id": bad})
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request"
    assert client.get(f"{API}/events", headers={"last-event-id": "x.y"}).status_code == 400


def _complete_frames(reader: RawSSE) -> Iterator[None]:
    while b"\n\n" in reader.buffer:
        raw, reader.buffer = reader.buffer.split(b"\n\n", 1)
        reader.comments += [line[1:].strip() for line in raw.decode().split("\n") if line.startswith(":")]
        yield None
