"""The Mail Servers console in Debian's chromium: the Outlook path of the help page, up to Create."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from mailgate.servers.models import MailServer
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

REDIRECT_URL = "http://127.0.0.1:8000/oauth/microsoft/callback"  # MAILGATE_PUBLIC_URL of tests
CONTRACT_LABELS = [
    "Mail Server Description",
    "Authenticate Using",
    "Username",
    "Password",
    "OAuth2 Redirect URL",
    "Client ID",
    "Client Secret Expires On",
    "Tenant",
    "SMTP Server",
    "SMTP Port",
    "Connection Security",
    "From Filter",
    "Priority",
    "Active",
    "Incoming Mail",
    "Incoming Server",
    "Incoming Port",
    "Incoming Security",
    "Folders",
    "Poll Interval",
    "Fetch Existing Mail",
    "After Fetch",
    "Move To Folder",
]
# Contained in another contract label, so found with exact=True.
EXACT_LABELS = ["Client Secret"]


def assert_each_label_finds_one_field(page: Page) -> None:
    """get_by_label is strict and counts hidden fields too: every contract label must match once."""
    for text in CONTRACT_LABELS:
        assert page.get_by_label(text).count() == 1, text
    for text in EXACT_LABELS:
        assert page.get_by_label(text, exact=True).count() == 1, text


@pytest.fixture
def admin_user(transactional_db: None) -> User:
    return User.objects.create_user(
        "alice@example.com", "alice@example.com", PASSWORD, is_staff=True
    )


def test_an_admin_adds_an_outlook_server_from_settings(
    page: Page,
    admin_user: User,
    sign_in: Callable[[Page, str, str], None],
    screenshots: Path,
) -> None:
    sign_in(page, "alice@example.com", PASSWORD)
    page.get_by_role("link", name="Settings").click()
    page.get_by_role("link", name="Technical").click()
    expect(page.get_by_role("heading", name="Mail Server", exact=True)).to_be_visible()
    page.get_by_role("link", name="Mail Servers").click()
    expect(page.get_by_role("heading", name="Mail Servers")).to_be_visible()
    page.get_by_role("link", name="Add").click()
    assert_each_label_finds_one_field(page)

    page.get_by_label("Mail Server Description").fill("Sales")
    page.get_by_label("Authenticate Using").select_option(label="Outlook OAuth Authentication")
    # The method's defaults arrive, and only the fields it needs are shown.
    expect(page.get_by_label("SMTP Server")).to_have_value("smtp.office365.com")
    expect(page.get_by_label("SMTP Port")).to_have_value("587")
    expect(page.get_by_label("Connection Security")).to_have_value("starttls")
    expect(page.get_by_label("Password", exact=True)).to_be_hidden()
    expect(page.get_by_label("Tenant")).to_be_visible()
    page.get_by_label("Username").fill("sales@contoso.com")
    page.get_by_label("Client ID").fill("11111111-2222-3333-4444-555555555555")
    page.get_by_label("Client Secret", exact=True).fill("Xy8Q~browser-secret-value-0123456789")
    page.get_by_label("Client Secret Expires On").fill("2099-12-31")
    page.get_by_label("Incoming Mail").select_option(label="IMAP")
    expect(page.get_by_label("Incoming Server")).to_have_value("outlook.office365.com")
    expect(page.get_by_label("Incoming Port")).to_have_value("993")
    expect(page.get_by_label("Folders")).to_have_value("INBOX")
    expect(page.get_by_label("Incoming Security")).to_have_value("ssl")
    expect(page.get_by_label("After Fetch")).to_have_value("keep")
    expect(page.get_by_label("Fetch Existing Mail")).not_to_be_checked()
    expect(page.get_by_label("Move To Folder")).to_be_hidden()
    page.get_by_label("After Fetch").select_option(label="Move to folder")
    expect(page.get_by_label("Move To Folder")).to_be_visible()
    page.get_by_label("After Fetch").select_option(label="Keep")

    redirect = page.get_by_label("OAuth2 Redirect URL")
    expect(redirect).to_have_value(REDIRECT_URL)
    expect(redirect).to_have_attribute("readonly", "")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("status")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == REDIRECT_URL
    page.screenshot(path=str(screenshots / "form.png"), full_page=True)

    page.get_by_role("button", name="Create").click()
    expect(page.get_by_text("Mail server “Sales” created.")).to_be_visible()
    expect(page.get_by_role("button", name="Save")).to_be_visible()
    assert_each_label_finds_one_field(page)
    page.get_by_role("link", name="Mail Servers").click()
    row = page.get_by_role("row", name="Sales")
    expect(row).to_contain_text("sales@contoso.com")
    expect(row).to_contain_text("Outlook OAuth Authentication")
    expect(row).to_contain_text("Not connected")
    page.screenshot(path=str(screenshots / "list.png"), full_page=True)

    server = MailServer.objects.get(name="Sales")
    assert server.incoming_host == "outlook.office365.com"
    assert server.client_secret.reveal() == "Xy8Q~browser-secret-value-0123456789"  # type: ignore[union-attr]


def test_switching_methods_keeps_what_the_user_typed(
    page: Page, admin_user: User, sign_in: Callable[[Page, str, str], None]
) -> None:
    sign_in(page, "alice@example.com", PASSWORD)
    page.goto("/settings/technical/mail-servers/add/")
    method = page.get_by_label("Authenticate Using")
    method.select_option("outlook")
    page.get_by_label("Incoming Mail").select_option("pop3")
    expect(page.get_by_label("Incoming Server")).to_have_value("outlook.office365.com")
    expect(page.get_by_label("Incoming Port")).to_have_value("995")
    page.get_by_label("National Cloud").select_option("usgov")
    expect(page.get_by_label("SMTP Server")).to_have_value("smtp.office365.us")
    page.get_by_label("SMTP Port").fill("2525")
    method.select_option("gmail")
    expect(page.get_by_label("SMTP Server")).to_have_value("smtp.gmail.com")
    expect(page.get_by_label("SMTP Port")).to_have_value("2525")
    expect(page.get_by_label("Incoming Server")).to_have_value("pop.gmail.com")
    expect(page.get_by_label("OAuth2 Redirect URL")).to_have_value(
        "http://127.0.0.1:8000/oauth/google/callback"
    )
    expect(page.get_by_label("Tenant")).to_be_hidden()
    page.get_by_label("SMTP Server").fill("smtp.mine.example")
    method.select_option("password")
    expect(page.get_by_label("SMTP Server")).to_have_value("smtp.mine.example")
    expect(page.get_by_label("Password", exact=True)).to_be_visible()
    expect(page.get_by_label("OAuth2 Redirect URL")).to_be_hidden()
    method.select_option("certificate")
    expect(page.get_by_label("Certificate (PEM)")).to_be_visible()
    expect(page.get_by_label("Private Key (PEM)")).to_be_visible()
    expect(page.get_by_label("Client ID")).to_be_hidden()
