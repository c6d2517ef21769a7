"""Playwright with Debian's chromium, for browser tests against pytest-django's live_server.

Fixtures: `browser` (chromium), `context` (clipboard permissions for the live server's origin),
`page`, and `sign_in(page, email, password)` which goes through the real sign-in page.

`screenshots` is where a test saves its screenshots: docs/screenshots/ only when asked
(MAILGATE_SCREENSHOTS=1, `make screenshots`), else the test's temporary folder, so that a test run
never changes tracked files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
TIMEOUT_MS = 15_000


@pytest.fixture
def playwright() -> Iterator[Playwright]:
    """Function-scoped on purpose: the sync API keeps an asyncio loop running in this thread
    while started, which would break other tests (asyncio.run, Django's async-safety check)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make test-deps)")
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    # The test body uses the ORM while Playwright's loop runs in the same thread.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    manager = sync_playwright()
    pw = manager.start()
    try:
        yield pw
    finally:
        pw.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def context(browser: Browser, live_server: object) -> Iterator[BrowserContext]:
    origin = str(live_server.url)  # type: ignore[attr-defined]
    context = browser.new_context(base_url=origin, viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def sign_in() -> Callable[[Page, str, str], None]:
    """Sign in through the console's sign-in page and wait for the dashboard."""

    def do(page: Page, email: str, password: str) -> None:
        page.goto("/")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("button", name="Sign out").wait_for()

    return do


def screenshots_wanted() -> bool:
    return os.environ.get("MAILGATE_SCREENSHOTS", "") == "1"


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """docs/screenshots/ with MAILGATE_SCREENSHOTS=1, else a temporary folder (the screenshots are
    still taken, so the pages are still rendered the same way)."""
    folder = SCREENSHOTS if screenshots_wanted() else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
