"""The help page, in Debian's chromium: Add -> Outlook OAuth Authentication -> copy the redirect URL ->
register it in the sandbox app -> Client ID / Secret -> Create -> Connect your Outlook account ->
sign in -> Accept -> Token Valid -> Test Connection succeeds. The same for Gmail."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Browser, BrowserContext, Page, expect

from mailgate.sandbox.server import Sandbox
from tests.conftest import PASSWORD
from tests.oauth.conftest import idp, mg_sandbox  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser


@pytest.fixture
def admin_user(transactional_db: None) -> User:
    return User.objects.create_user(
        "alice@example.com", "alice@example.com", PASSWORD, is_staff=True
    )


@pytest.fixture
def public(live_server: Any, settings: Any, idp: Sandbox) -> str:  # noqa: F811
    """mailgate's public URL is the live server, so providers redirect back to it."""
    settings.MAILGATE_PUBLIC_URL = str(live_server.url)
    return str(live_server.url)


@pytest.fixture
def tab(browser: Browser, public: str) -> Iterator[Page]:
    # The browser does not know the sandbox CA (mailgate does, through SSL_CERT_FILE).
    context: BrowserContext = browser.new_context(
        base_url=public, ignore_https_errors=True, viewport={"width": 1280, "height": 900}
    )
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=public)
    context.set_default_timeout(20_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def add_server(page: Page, *, description: str, method: str, username: str) -> str:
    """Settings > Technical > Mail Servers > Add, fill the first fields, copy the redirect URL."""
    page.get_by_role("link", name="Settings").click()
    page.get_by_role("link", name="Technical").click()
    page.get_by_role("link", name="Mail Servers").click()
    page.get_by_role("link", name="Add").click()
    page.get_by_label("Mail Server Description").fill(description)
    page.get_by_label("Authenticate Using").select_option(label=method)
    page.get_by_label("Username").fill(username)
    page.get_by_role("button", name="Copy").click()
    return str(page.evaluate("navigator.clipboard.readText()"))


def finish_form(page: Page, sandbox: Sandbox, client_id: str, secret: str) -> None:
    host, _, port = sandbox.address("smtp").rpartition(":")
    page.get_by_label("Client ID").fill(client_id)
    page.get_by_label("Client Secret", exact=True).fill(secret)
    page.get_by_label("SMTP Server").fill(host)
    page.get_by_label("SMTP Port").fill(port)
    page.get_by_role("button", name="Create").click()


def test_the_outlook_help_page_flow(
    tab: Page,
    admin_user: User,
    sign_in: Callable[[Page, str, str], None],
    idp: Sandbox,  # noqa: F811
    public: str,
) -> None:
    demo = idp.demo
    sign_in(tab, "alice@example.com", PASSWORD)
    redirect_url = add_server(
        tab,
        description="Sales (Outlook)",
        method="Outlook OAuth Authentication",
        username=demo["user"],
    )
    assert redirect_url == f"{public}/oauth/microsoft/callback"
    idp.control.add_redirect_uri(demo["client_id"], redirect_url)
    finish_form(tab, idp, demo["client_id"], demo["client_secret"])

    tab.get_by_role("button", name="Connect your Outlook account").click()
    expect(tab.get_by_label("Email")).to_have_value(demo["user"])  # login_hint
    tab.get_by_label("Password").fill(demo["password"])
    tab.get_by_role("button", name="Sign in").click()
    tab.get_by_role("button", name="Accept").click()

    expect(tab.get_by_text("Token Valid")).to_be_visible()
    expect(tab.locator(".account")).to_have_text(demo["user"])
    tab.get_by_role("button", name="Test Connection").click()
    expect(tab.get_by_text("Connection test succeeded")).to_be_visible()


def test_the_gmail_help_page_flow(
    tab: Page,
    admin_user: User,
    sign_in: Callable[[Page, str, str], None],
    idp: Sandbox,  # noqa: F811
    public: str,
) -> None:
    demo = idp.demo
    sign_in(tab, "alice@example.com", PASSWORD)
    redirect_url = add_server(
        tab,
        description="Support (Gmail)",
        method="Gmail OAuth Authentication",
        username=demo["google_user"],
    )
    assert redirect_url == f"{public}/oauth/google/callback"
    idp.control.call(
        "update_google_project",
        client_id=demo["google_client_id"],
        redirect_uris=[redirect_url],
    )
    finish_form(tab, idp, demo["google_client_id"], demo["google_client_secret"])

    tab.get_by_role("button", name="Connect your Gmail account").click()
    tab.get_by_label("Password").fill(demo["google_password"])
    tab.get_by_role("button", name="Next").click()
    tab.get_by_role("button", name="Continue").click()

    expect(tab.get_by_text("Token Valid")).to_be_visible()
    expect(tab.locator(".account")).to_have_text(demo["google_user"])
    tab.get_by_role("button", name="Test Connection").click()
    expect(tab.get_by_text("Connection test succeeded")).to_be_visible()
