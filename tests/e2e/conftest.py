"""Headless Chromium (Debian's package) driven by Playwright against pytest-django's live server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.conftest import DEMO_PASSWORD

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}


def chromium_executable() -> str:
    """Debian's chromium from PATH; the browser tests fail (never skip) without it."""
    found = shutil.which("chromium")
    if found is None:
        pytest.fail(
            "chromium is not on PATH: the browser tests need Debian's package, `apt-get install chromium` "
            "(`playwright install` is not used: it downloads its own browser)",
            pytrace=False,
        )
    return found


class BrowserLog:
    """What the pages of one test wrote to the console as errors, threw, or refused under the CSP."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self._documents: set[str] = set()
        page.on("request", self._request)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught {error}"))

    def _request(self, request: Request) -> None:
        """Remember the pages themselves: their status is the test's to check, not a console error."""
        if request.resource_type == "document":
            self._documents.add(request.url)

    def _console(self, message: ConsoleMessage) -> None:
        """Chromium reports CSP violations, failed loads and script errors as console errors."""
        if message.type != "error":
            return
        url = message.location.get("url", "")
        # A form re-rendered with its errors answers 400 by design; the tests assert that status.
        if (
            message.text.startswith("Failed to load resource")
            and url in self._documents
            and "status of 400" in message.text
        ):
            return
        # pytest-django's live server speaks WSGI, which has no websockets: the pages' live parts
        # are tested through uvicorn (test_live.py, test_drift_browser.py), not here.
        if message.text.startswith("WebSocket connection to") and "Unexpected response code: 404" in message.text:
            return
        self.errors.append(f"{message.text} ({url})")


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    """One Playwright driver for the browser tests, stopped before the rest of the suite runs."""
    with pytest.MonkeyPatch.context() as patch:
        # Playwright's sync API keeps its asyncio loop running in this thread while it is
        # started, so Django sees a running event loop and refuses the ORM calls of the
        # test and of its database teardown (SynchronousOnlyOperation). No coroutine
        # touches the ORM here; the live server answers the browser from its own thread.
        # Allowed only while the driver runs: the rest of the suite keeps the guard.
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as driver:
            yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """One headless Chromium for the browser tests; each test gets its own context (cookies, storage)."""
    launched = playwright.chromium.launch(executable_path=chromium_executable(), args=CHROMIUM_ARGS, headless=True)
    yield launched
    launched.close()


@pytest.fixture
def page(browser: Browser, live_server) -> Iterator[Page]:
    """A fresh page (no session) whose relative URLs go to the live server; failures time out in 10 s."""
    context = browser.new_context(base_url=live_server.url, viewport=VIEWPORT)
    context.set_default_timeout(10_000)
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def browser_log(page: Page) -> BrowserLog:
    """Console errors, uncaught exceptions and CSP violations of every page the test opens."""
    return BrowserLog(page)


def sign_in(page: Page, username: str, password: str = DEMO_PASSWORD, *, base: str = "") -> None:
    """Sign in through the login form, as a person would, and wait for the dashboard (of ``base``, if given)."""
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/")
    expect(page.locator("h1")).to_have_text("Dashboard")
