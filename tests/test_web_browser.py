"""The web dashboard in a real browser: Playwright driving Debian's Chromium against a live fleet.

`coordinator run` (echo backend, a command agent that prints a tick every 0.2 s)
serves the dashboard; `coordinator ui` gives the one-time link. The test watches
tasks appear as their files are dropped, a running task's log grow, and Cancel
and Retry take effect, all without reloading the page; then checks that a 400 px
wide window has no horizontal overflow. Screenshots of each view are left in the
test's tmp_path. Skipped without /usr/bin/chromium unless COORDINATOR_REQUIRE_CHROMIUM
is set (CI installs it), and then it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
import pytest

from coordinator.config import load_config
from coordinator.gateway.server import start_in_thread
from tests.api_support import gateway_info, start_run, write_echo_fleet
from tests.procs import run_cli, stop

CHROMIUM = Path("/usr/bin/chromium")
# The machine's closed network refuses Chromium's background connections; these keep it from trying.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = 20_000
TICKER = """
[agents.ticker]
kind = "command"
command = ["sh", "{root}/tick.sh"]
"""
TICK_SCRIPT = 'i=0\nwhile [ $i -lt 900 ]; do i=$((i+1)); echo "tick $i"; sleep 0.2; done\n'

if not CHROMIUM.exists():
    if os.environ.get("COORDINATOR_REQUIRE_CHROMIUM"):
        pytest.fail(f"{CHROMIUM} is missing (COORDINATOR_REQUIRE_CHROMIUM is set): apt-get install chromium",
                    pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402  (only once a browser is there)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "fleet"
    write_echo_fleet(root, TICKER.format(root=root))
    (root / "tick.sh").write_text(TICK_SCRIPT)
    proc = start_run(root, agents=2)
    try:
        gateway_info(root)
        yield root
    finally:
        stop(proc, signal.SIGTERM)


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1100, "height": 900})
        finally:
            browser.close()


def drop(root: Path, task_id: str, text: str) -> None:
    """A task file appears in tasks/ whole, as an editor's save or `coordinator add` makes it."""
    tmp = root / f".{task_id}.toml.tmp"
    tmp.write_text(text)
    tmp.rename(root / "tasks" / f"{task_id}.toml")


def shown_state(root: Path, task_id: str) -> str:
    return json.loads(run_cli(root, "show", task_id, "--json").stdout)["state"]


def no_horizontal_overflow(page: Page) -> bool:
    return page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")


@pytest.mark.timeout(300)
def test_the_dashboard_follows_the_fleet_live(fleet: Path, page: Page, tmp_path: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    link = run_cli(fleet, "ui")
    assert link.returncode == 0, link.stderr
    page.goto(link.stdout.strip())
    expect(page).to_have_url(re.compile(r"/ui/$"))
    overview_follows_a_task_to_done(fleet, page, tmp_path)
    list_shows_dropped_tasks_and_filters(fleet, page, tmp_path)
    task_page_follows_the_log_cancel_and_retry(fleet, page, tmp_path)
    page.set_viewport_size({"width": 400, "height": 800})
    for name, path in (("overview", "/ui/"), ("list", "/ui/tasks"), ("detail", "/ui/tasks/tick")):
        page.goto(page.url.split("/ui/")[0] + path)
        expect(page.locator("#conn")).to_have_text("live", timeout=WAIT_MS)
        assert no_horizontal_overflow(page), f"the {name} view is wider than 400 px"
        page.screenshot(path=tmp_path / f"narrow-{name}.png", full_page=True)
    assert errors == [], "the script threw"


def overview_follows_a_task_to_done(fleet: Path, page: Page, tmp_path: Path) -> None:
    expect(page.locator("#conn")).to_have_text("live", timeout=WAIT_MS)
    page.evaluate("window.stayed = true")  # gone if the page reloads
    drop(fleet, "quick", 'prompt = "Say hello to the dashboard"\nagent = "llm"\n')
    expect(page.locator(".count.state-done .n")).to_have_text("1", timeout=WAIT_MS)
    expect(page.locator("#events")).to_contain_text("done quick", timeout=WAIT_MS)
    requests = page.locator('.figures div:has(dt:text-is("requests")) dd')
    expect(requests).not_to_have_text("0", timeout=WAIT_MS)  # the llm agent's calls through the gateway
    assert page.evaluate("window.stayed") is True, "the overview changed without a reload"
    page.screenshot(path=tmp_path / "overview.png", full_page=True)


def list_shows_dropped_tasks_and_filters(fleet: Path, page: Page, tmp_path: Path) -> None:
    page.click("header nav >> text=Tasks")
    expect(page.locator('tr[data-task="quick"]')).to_be_visible(timeout=WAIT_MS)
    page.evaluate("window.stayed = true")
    drop(fleet, "tick", 'prompt = "Count for a while"\nagent = "ticker"\n')
    expect(page.locator('tr[data-task="tick"] .badge')).to_have_text("running", timeout=WAIT_MS)
    page.fill("#filters input[name=q]", "count")
    expect(page.locator("tr[data-task]")).to_have_count(1, timeout=WAIT_MS)
    expect(page).to_have_url(re.compile(r"/ui/tasks\?q=count$"))
    assert page.evaluate("window.stayed") is True, "the list changed without a reload"
    page.screenshot(path=tmp_path / "list.png", full_page=True)


def task_page_follows_the_log_cancel_and_retry(fleet: Path, page: Page, tmp_path: Path) -> None:
    page.click('tr[data-task="tick"] a')
    expect(page).to_have_url(re.compile(r"/ui/tasks/tick$"))
    log, state = page.locator("#log"), page.locator("#state")
    expect(log).to_contain_text("tick 2", timeout=WAIT_MS)
    page.evaluate("window.stayed = true")
    ticks = [int(n) for n in re.findall(r"tick (\d+)", log.inner_text())]
    expect(log).to_contain_text(f"tick {max(ticks) + 5}\n", timeout=WAIT_MS)  # lines written after the page opened
    expect(state).to_have_text("running", timeout=WAIT_MS)
    page.screenshot(path=tmp_path / "detail.png", full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=cancel]")
    expect(state).to_have_text("cancelled", timeout=WAIT_MS)
    expect(page.locator("#log-note")).to_have_text("ended: cancelled", timeout=WAIT_MS)
    expect(page.locator("button[data-action=retry]")).to_be_visible(timeout=WAIT_MS)
    assert shown_state(fleet, "tick") == "cancelled"

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=retry]")
    expect(log).to_contain_text("— run 2 —", timeout=WAIT_MS)
    expect(state).to_have_text("running", timeout=WAIT_MS)
    assert shown_state(fleet, "tick") == "running"
    assert page.evaluate("window.stayed") is True, "the task page changed without a reload"
    page.screenshot(path=tmp_path / "detail-retried.png", full_page=True)


def test_a_browser_without_the_cookie_sees_only_how_to_sign_in(tmp_path: Path, page: Page) -> None:
    root = write_echo_fleet(tmp_path / "fleet")
    drop(root, "private", 'prompt = "nobody signed out sees this"\n')
    handle = start_in_thread(load_config(root), {}, port=0)
    try:
        response = page.goto(f"{handle.url}/ui/tasks")
        assert response is not None and response.status == 401
        expect(page.locator("main")).to_contain_text("coordinator ui --open")
        assert "private" not in page.content() and page.locator("table").count() == 0
    finally:
        handle.stop()
