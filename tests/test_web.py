"""The web dashboard's sign-in, refusals and rendering, with httpx against a gateway on a thread.

Time is a ``ManualClock`` handed to the gateway, so "a minute later" is one call
and no test sleeps. The browser itself is driven in tests/test_web_browser.py.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from coordinator.clock import ManualClock
from coordinator.config import load_config
from coordinator.gateway.server import GatewayHandle, start_in_thread
from coordinator.gateway.tokens import task_token
from coordinator.serve.sessions import CODE_TTL_S, MAX_CODES, SESSION_TTL_S, Sessions
from tests.api_support import API, write_echo_fleet
from tests.conftest import subprocess_env
from tests.procs import run_cli
from tests.ws_support import add_tasks, make_repo_fleet, run_agents

EVIL = "http://evil.example"
XSS = "<script>alert(1)</script>"


@dataclass
class Server:
    handle: GatewayHandle
    root: Path
    clock: ManualClock

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.handle.token}"}

    def code(self) -> str:
        response = httpx.post(f"{self.url}{API}/login-codes", headers=self.bearer)
        assert response.status_code == 200, response.text
        return response.json()["code"]

    def sign_in(self) -> dict[str, str]:
        """A signed-in browser's Cookie header."""
        response = httpx.get(f"{self.url}/ui/login", params={"code": self.code()})
        assert response.status_code == 303
        name, value = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)
        return {"cookie": f"{name}={value}"}

    def add(self, task_id: str, prompt: str, **keys: str) -> None:
        body = {"id": task_id, "prompt": prompt, **keys}
        assert httpx.post(f"{self.url}{API}/tasks", headers=self.bearer, json=body).status_code == 202


def serve(root: Path) -> Iterator[Server]:
    clock = ManualClock()
    handle = start_in_thread(load_config(root), {}, port=0, clock=clock)
    try:
        yield Server(handle, root, clock)
    finally:
        handle.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    yield from serve(write_echo_fleet(tmp_path / "fleet"))


def test_without_the_cookie_every_view_is_refused_and_shows_no_data(server: Server) -> None:
    server.add("secret-task", "the secret prompt")
    for path in ("/ui/", "/ui/tasks", "/ui/tasks/secret-task", "/ui/tasks?state=pending"):
        for headers in ({}, {"x-coordinator-fragment": "1"}, {"cookie": "coordinator_session_1=forged"}):
            response = httpx.get(server.url + path, headers=headers)
            assert response.status_code == 401, path
            assert response.headers["content-type"].startswith("text/html")
            assert "coordinator ui" in response.text
            assert "secret" not in response.text
    assert httpx.get(f"{server.url}{API}/tasks/secret-task").status_code == 401


def test_a_login_code_signs_in_once_with_a_strict_httponly_cookie(server: Server) -> None:
    code = server.code()
    response = httpx.get(f"{server.url}/ui/login", params={"code": code})
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    port = server.url.rsplit(":", 1)[1]
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().split("=", 1)[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert cookie.startswith(f"coordinator_session_{port}=")
    assert "httponly" in attributes and attributes["samesite"] == "SameSite=Strict" and attributes["path"] == "Path=/"
    assert "secure" not in attributes, "plain http on loopback: a Secure cookie would never be sent back"
    signed_in = {"cookie": cookie.split(";", 1)[0]}
    page = httpx.get(f"{server.url}/ui/", headers=signed_in)
    assert page.status_code == 200 and "<h2>Queue" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    again = httpx.get(f"{server.url}/ui/login", params={"code": code})
    assert again.status_code == 401 and "set-cookie" not in again.headers, "a code works once"
    assert httpx.get(f"{server.url}/ui/login", params={"code": "not-a-code"}).status_code == 401


def test_an_expired_code_is_refused(server: Server) -> None:
    late, in_time = server.code(), server.code()
    server.clock.advance(CODE_TTL_S - 1)
    assert httpx.get(f"{server.url}/ui/login", params={"code": in_time}).status_code == 303
    server.clock.advance(1)
    response = httpx.get(f"{server.url}/ui/login", params={"code": late})
    assert response.status_code == 401 and "set-cookie" not in response.headers
    assert "expired" in response.text


def test_a_session_ends_after_its_time(server: Server) -> None:
    cookie = server.sign_in()
    assert httpx.get(f"{server.url}/ui/tasks", headers=cookie).status_code == 200
    server.clock.advance(SESSION_TTL_S)
    assert httpx.get(f"{server.url}/ui/tasks", headers=cookie).status_code == 401
    assert httpx.get(f"{server.url}{API}/tasks", headers=cookie).status_code == 401


def test_outstanding_codes_are_capped_and_the_oldest_dropped() -> None:
    sessions = Sessions(ManualClock())
    codes = [sessions.mint_code() for _ in range(MAX_CODES + 1)]
    assert sessions.redeem(codes[0]) is None, "the oldest made room for the newest"
    assert sessions.redeem(codes[-1]) is not None and sessions.redeem(codes[1]) is not None
    assert sessions.redeem(codes[-1]) is None


def test_only_the_fleet_token_mints_codes(server: Server) -> None:
    assert httpx.post(f"{server.url}{API}/login-codes").status_code == 401
    own = {"authorization": f"Bearer {task_token(server.handle.token, 'a')}"}
    assert httpx.post(f"{server.url}{API}/login-codes", headers=own).status_code == 403


def test_the_cookie_reads_the_api_and_streams(server: Server) -> None:
    server.add("a", "first task")
    cookie = server.sign_in()
    assert [row["id"] for row in httpx.get(f"{server.url}{API}/tasks", headers=cookie).json()["tasks"]] == ["a"]
    with httpx.stream("GET", f"{server.url}{API}/tasks/a/events", params={"follow": "false"}, headers=cookie) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        assert 'data: {"state":"pending"}' in s.read().decode()


def test_a_cookie_mutation_must_come_from_the_servers_own_origin(server: Server) -> None:
    server.add("a", "first task")
    cookie = server.sign_in()
    cancel = f"{server.url}{API}/tasks/a/cancel"
    for extra in ({"origin": EVIL}, {"referer": f"{EVIL}/page"}, {"origin": "null"}, {},
                  {"origin": server.url.replace("127.0.0.1", "localhost")}):
        response = httpx.post(cancel, headers={**cookie, **extra})
        assert response.status_code == 403, extra
        assert response.json()["error"]["type"] == "bad_origin"
    assert httpx.get(f"{server.url}{API}/tasks/a", headers=server.bearer).json()["state"] == "pending"
    assert httpx.post(cancel, headers={**server.bearer, "origin": EVIL}).status_code == 403, "whatever signs it"
    response = httpx.post(cancel, headers={**cookie, "referer": f"{server.url}/ui/tasks/a"})
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    retry = httpx.post(f"{server.url}{API}/tasks/a/retry", headers={**cookie, "origin": server.url})
    assert retry.status_code == 200 and retry.json()["state"] == "pending"
    assert httpx.post(cancel, headers=server.bearer).status_code == 200, "API clients send no Origin"


def test_a_foreign_host_is_refused_before_the_code_is_spent(server: Server) -> None:
    code = server.code()
    port = server.url.rsplit(":", 1)[1]
    foreign = {"host": f"attacker.test:{port}"}
    assert httpx.get(f"{server.url}/ui/login", params={"code": code}, headers=foreign).status_code == 403
    cookie = server.sign_in()
    assert httpx.get(f"{server.url}/ui/", headers={**cookie, **foreign}).status_code == 403
    assert httpx.get(f"{server.url}/ui/login", params={"code": code}).status_code == 303


def test_task_text_is_shown_as_text_never_as_markup(server: Server) -> None:
    server.add("xss", f"{XSS} and \"quotes\" & more")
    (server.root / "tasks" / "<img src=x onerror=alert(2)>.toml").write_text("prompt = 3\n")
    cookie = server.sign_in()
    for path in ("/ui/tasks", "/ui/tasks/xss", "/ui/", "/ui/tasks?q=%3Cscript%3E"):
        page = httpx.get(server.url + path, headers=cookie)
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
    listing = httpx.get(f"{server.url}/ui/tasks", headers=cookie).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing
    assert "&lt;img src=x onerror=alert(2)&gt;.toml" in listing
    detail = httpx.get(f"{server.url}/ui/tasks/xss", headers=cookie).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; and &quot;quotes&quot; &amp; more" in detail
    searched = httpx.get(f"{server.url}/ui/tasks", params={"q": XSS}, headers=cookie).text
    assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in searched and _rows(searched) == ["xss"]


def test_the_list_filters_by_state_and_text(server: Server) -> None:
    for task_id, prompt in (("alpha", "write the parser"), ("beta", "write the docs"), ("gamma", "fix the parser")):
        server.add(task_id, prompt)
    httpx.post(f"{server.url}{API}/tasks/beta/cancel", headers=server.bearer)
    cookie = server.sign_in()

    def rows(**query: str) -> list[str]:
        return _rows(httpx.get(f"{server.url}/ui/tasks", params=query, headers=cookie).text)
    assert rows() == ["alpha", "beta", "gamma"]
    assert rows(state="cancelled") == ["beta"]
    assert rows(q="PARSER") == ["alpha", "gamma"]
    assert rows(state="pending", q="fix") == ["gamma"]
    assert rows(state="done") == [] and rows(state="no-such-state") == []
    fragment = httpx.get(f"{server.url}/ui/tasks", params={"q": "docs"}, headers={**cookie,
                                                                                   "x-coordinator-fragment": "1"})
    assert "<html" not in fragment.text and _rows(fragment.text) == ["beta"]


def test_a_task_page_offers_the_actions_its_state_allows(server: Server) -> None:
    server.add("a", "first task")
    cookie = server.sign_in()

    def actions() -> list[str]:
        return re.findall(r'data-action="(\w+)"', httpx.get(f"{server.url}/ui/tasks/a", headers=cookie).text)
    assert actions() == ["cancel"]
    httpx.post(f"{server.url}{API}/tasks/a/cancel", headers=server.bearer)
    assert actions() == ["retry"]
    missing = httpx.get(f"{server.url}/ui/tasks/nope", headers=cookie)
    assert missing.status_code == 404 and "no task &#x27;nope&#x27;" in missing.text


def test_the_overview_shows_the_queue_and_the_gateway_savings_as_status_does(server: Server) -> None:
    server.add("a", "first task")
    for _ in range(2):  # the second is served from the gateway's response cache
        answer = httpx.post(f"{server.url}/v1/messages", headers={**server.bearer, "anthropic-version": "2023-06-01"},
                            json={"model": "default", "max_tokens": 50, "temperature": 0,
                                  "messages": [{"role": "user", "content": "hello there"}]})
        assert answer.status_code == 200
    cookie = server.sign_in()
    page = httpx.get(f"{server.url}/ui/", headers=cookie).text
    gateway = httpx.get(f"{server.url}{API}/status", headers=cookie).json()["gateway"]
    assert gateway["requests"] == 2 and gateway["dedup_hits"] == 1 and gateway["usd_saved"] > 0
    assert re.search(r'state-pending" href="/ui/tasks\?state=pending"><span class="n">1</span>', page)
    assert f"serving at <code>{gateway['url']}</code>" in page
    assert f'<span class="big">${gateway["usd_saved"]:.4f}</span> saved' in page
    assert f"(${gateway['usd_would_be']:.4f} without them)" in page
    assert "<dt>requests</dt><dd>2</dd>" in page and "<dt>served from the response cache</dt><dd>1</dd>" in page
    assert 'mode = "shared"' in page, "no merge queue without workspaces"


def test_the_overview_shows_the_merge_queue(tmp_path: Path) -> None:
    root = make_repo_fleet(tmp_path / "repo", 'echo "$1" > "$1.txt"\n')
    add_tasks(root, ["w1"])
    run_agents(root, 1)
    for server in serve(root):
        page = httpx.get(f"{server.url}/ui/", headers=server.sign_in()).text
        section = page[page.index("<h2>Merge queue"):]
        assert "<dt>landed</dt><dd>1</dd>" in section
        commit = json.loads(run_cli(root, "show", "w1", "--json").stdout)["record"]["landed"]
        assert f'<a href="/ui/tasks/w1">w1</a> at <code>{commit[:12]}</code>' in section


def test_the_script_and_style_sheet_are_served_and_packaged(server: Server) -> None:
    static = Path(sys.modules["coordinator.serve"].__file__).parent / "static"
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        response = httpx.get(f"{server.url}/ui/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert response.content == (static / name).read_bytes()
    assert httpx.get(f"{server.url}/ui/static/..%2Fapi.py").status_code == 404
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["coordinator.serve"]
    for path in static.iterdir():
        assert any(path.match(pattern) for pattern in patterns), f"{path.name} is missing from package-data"


def test_coordinator_ui_without_a_gateway_says_how_to_start_one(tmp_path: Path) -> None:
    root = write_echo_fleet(tmp_path / "fleet")
    result = run_cli(root, "ui")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "no gateway is running" in result.stderr and "`coordinator gateway`" in result.stderr


def test_coordinator_ui_says_so_when_the_gateway_does_not_answer(tmp_path: Path) -> None:
    root = write_echo_fleet(tmp_path / "fleet")
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    state = root / ".coordinator"
    state.mkdir()
    (state / "gateway.json").write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "pid": os.getpid(),
                                                    "token": "cgf-stale"}))
    result = run_cli(root, "ui")
    assert result.returncode == 1 and result.stdout == "" and result.stderr.count("\n") == 1
    assert f"the gateway at http://127.0.0.1:{port} did not answer" in result.stderr
    assert "Traceback" not in result.stderr


def test_coordinator_ui_prints_a_link_and_opens_it(server: Server, tmp_path: Path) -> None:
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > "{opened}"\n')
    browser.chmod(0o755)
    printed = run_cli(server.root, "ui")
    assert printed.returncode == 0, printed.stderr
    assert re.fullmatch(rf"{re.escape(server.url)}/ui/login\?code=[\w-]+\n", printed.stdout)
    assert httpx.get(printed.stdout.strip()).status_code == 303
    result = run_cli(server.root, "ui", "--open", env=subprocess_env(BROWSER=f"{browser} %s"))
    assert result.returncode == 0, result.stderr
    link = opened.read_text().strip()
    assert link == result.stdout.strip() and link != printed.stdout.strip()
    assert httpx.get(link).status_code == 303


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr data-task="([^"]+)"', page)
