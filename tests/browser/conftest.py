"""Fixtures for the real-browser tests: Debian's chromium driven by Playwright.

Playwright never downloads a browser here (no `playwright install`); we launch
/usr/bin/chromium, which `make test` installs (`make browser`).
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    """One chromium for all the browser tests. launch() gives it a fresh temporary
    profile (Playwright makes and deletes the user-data dir; it refuses --user-data-dir).

    Package scope, not session: the Playwright driver must stop when the last browser
    test is done, before the rest of the suite runs (see below)."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} not found: install Debian's chromium (`make browser`, or "
            "`apt-get install -y chromium`); Playwright's own browsers are not used"
        )
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as env:
        # Playwright's sync API runs an asyncio event loop in this thread (inside a
        # greenlet) from `sync_playwright().start()` until `.stop()`, and
        # `asyncio.get_running_loop()` reports it as running the whole time, also while
        # test code runs. Django's ORM sees that loop and raises SynchronousOnlyOperation
        # for every query made from the test thread (test database setup and flushes,
        # creating users and squads, reading rows back), although nothing here is async:
        # the loop only waits on the browser's pipe during a Playwright call. The live
        # server answers in its own thread, where no loop runs, so it needs no flag.
        # The flag is set only while the driver runs, not for the whole process: child
        # processes inherit it (`manage.py check --deploy` reports async.E001 for it).
        env.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        pw = sync_playwright().start()
        try:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                browser.close()
        finally:
            pw.stop()


# Runs in every page before its own scripts (Playwright injects it outside the page's
# Content-Security-Policy): each violation the browser reports is written to the console,
# where the fixture below collects it.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`
    + ` at ${e.sourceFile || e.documentURI}:${e.lineNumber}`);
});
"""


def csp_violations(messages: list[str]) -> list[str]:
    """Console messages that report a Content-Security-Policy violation: the page's own
    listener's, and chromium's "Refused to …" lines."""
    return [
        m
        for m in messages
        if m.startswith("CSP violation:") or ("Refused to" in m and "Content Security Policy" in m)
    ]


@pytest.fixture
def console(browser, live_server) -> list[str]:
    """Every console message of the test's pages (the `page` fixture fills it)."""
    return []


@pytest.fixture
def page(browser, live_server, console) -> Iterator[object]:
    """A fresh context (no cookies) and page per test, pointed at the live server.

    The test fails on any uncaught JavaScript error and on any Content-Security-Policy
    violation (apps/core/csp.py): an inline script, handler or style, or a remote origin."""
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    context.set_default_navigation_timeout(DEFAULT_TIMEOUT_MS)
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda message: console.append(message.text))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    violations = csp_violations(console)
    assert not violations, f"Content-Security-Policy violations: {violations}"


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
