"""Fixtures for the real-browser tests: Debian's chromium driven by Playwright.

Playwright never downloads a browser here (no `playwright install`); we launch
/usr/bin/chromium, which `make test` installs (`make browser`).
"""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Playwright's sync API runs an asyncio event loop in the main thread (inside a
# greenlet) from `sync_playwright().start()` until `.stop()`, and
# `asyncio.get_running_loop()` reports it as running the whole time. Django's
# ORM sees that running loop and raises SynchronousOnlyOperation for every
# query made from the test thread (creating users and squads, reading rows back),
# although nothing here is actually async: the loop only waits on the browser's
# pipe while a Playwright call is in progress. The browser is session-scoped, so
# the loop stays "running" until the session ends, which also covers the
# non-browser tests that run after these in the same process; that is why the
# flag is set when this conftest is imported rather than per test.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEFAULT_TIMEOUT_MS = 10_000


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """One chromium for the whole session. launch() gives it a fresh temporary profile
    (Playwright makes and deletes the user-data dir itself; it refuses --user-data-dir)."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} not found: install Debian's chromium (`make browser`, or "
            "`apt-get install -y chromium`); Playwright's own browsers are not used"
        )
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        pw.stop()


@pytest.fixture
def page(browser, live_server) -> Iterator[object]:
    """A fresh context (no cookies) and page per test, pointed at the live server."""
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    context.set_default_navigation_timeout(DEFAULT_TIMEOUT_MS)
    page = context.new_page()
    # Any uncaught JavaScript error on a page fails the test.
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def login(live_server) -> Callable[[object, str, str], None]:
    """login(page, username, password): sign in through the real form at /login/."""

    def do_login(page, username: str, password: str) -> None:
        from playwright.sync_api import expect

        page.goto("/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{live_server.url}/")
        expect(page.get_by_role("heading", name="Your squads")).to_be_visible()

    return do_login
