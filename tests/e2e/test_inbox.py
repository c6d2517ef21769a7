"""The Inbox page in a real browser: mail fetched from Dovecot, a quarantined message, its
headers, bodies and attachment download, and Retry (administrators only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.test import Client
from playwright.sync_api import Page, expect

from mailgate.inbox import handoff
from mailgate.inbox.fetcher import fetch_server
from mailgate.inbox.models import IncomingMessage, Status
from mailgate.inbox.signals import message_received
from tests.conftest import PASSWORD
from tests.inbox.conftest import (  # noqa: F401 - fixtures
    Mailbox,
    PasswordDovecot,
    mailbox,
    make_server,
    password_dovecot,
    trust,
)
from tests.inbox.test_handoff import with_attachment


def quarantined_message(dovecot: PasswordDovecot, box: Mailbox) -> IncomingMessage:
    server = make_server(dovecot, box, fetch_existing=True)
    box.append(with_attachment("invoice-7"))
    assert fetch_server(server).counts == {"INBOX": 1}

    def broken(sender: Any, message: IncomingMessage, **kwargs: Any) -> None:
        raise RuntimeError("the ERP refused the invoice")

    message_received.connect(broken)
    try:
        for _ in range(handoff.MAX_ATTEMPTS):
            IncomingMessage.objects.update(next_attempt_at=None)
            handoff.hand_off()
    finally:
        message_received.disconnect(broken)
    row = IncomingMessage.objects.get()
    assert row.status == Status.QUARANTINED
    return row


def test_the_inbox_page_shows_a_quarantined_message_and_retries_it(
    page: Page,
    transactional_db: None,
    password_dovecot: PasswordDovecot,  # noqa: F811
    mailbox: Mailbox,  # noqa: F811
    trust: None,  # noqa: F811
    settings: Any,
    tmp_path: Path,
    sign_in: Callable[[Page, str, str], None],
    screenshots: Path,
) -> None:
    settings.MAILGATE_HOME = tmp_path
    row = quarantined_message(password_dovecot, mailbox)
    User.objects.create_user("alice@example.com", "alice@example.com", PASSWORD, is_staff=True)
    sign_in(page, "alice@example.com", PASSWORD)
    page.get_by_role("link", name="Inbox").click()
    expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    listing = page.get_by_role("row").filter(has_text="invoice-7")
    expect(listing).to_contain_text("Quarantine")
    expect(page.get_by_role("table", name="Mailboxes")).to_contain_text(row.server.name)
    page.screenshot(path=str(screenshots / "inbox.png"), full_page=True)

    page.get_by_role("link", name="invoice-7").click()
    expect(page.get_by_role("heading", name="invoice-7")).to_be_visible()
    expect(page.get_by_text("the ERP refused the invoice")).to_be_visible()
    expect(page.get_by_label("Text body")).to_contain_text("Please find the invoice attached.")
    headers = page.get_by_role("table", name="Headers")
    expect(headers).to_contain_text("billing@supplier.example")
    html = page.frame_locator("iframe[title='HTML body']")
    expect(html.locator("b")).to_have_text("invoice")
    with page.expect_download() as info:
        page.get_by_role("link", name="inv.pdf").click()
    saved = tmp_path / "inv.pdf"
    info.value.save_as(saved)
    assert saved.read_bytes() == b"%PDF-1.4 invoice"
    page.screenshot(path=str(screenshots / "inbox-message.png"), full_page=True)

    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_text("handed to the application again")).to_be_visible()
    row.refresh_from_db()
    assert row.status == Status.RECEIVED and row.attempts == 0
    handoff.hand_off()
    page.reload()
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    row.refresh_from_db()
    assert row.status == Status.DELIVERED


def test_a_viewer_sees_the_inbox_but_cannot_retry(
    page: Page,
    transactional_db: None,
    password_dovecot: PasswordDovecot,  # noqa: F811
    mailbox: Mailbox,  # noqa: F811
    trust: None,  # noqa: F811
    settings: Any,
    tmp_path: Path,
    sign_in: Callable[[Page, str, str], None],
) -> None:
    settings.MAILGATE_HOME = tmp_path
    row = quarantined_message(password_dovecot, mailbox)
    viewer = User.objects.create_user("victor@example.com", "victor@example.com", PASSWORD)
    sign_in(page, "victor@example.com", PASSWORD)
    page.goto(f"/inbox/{row.pk}/")
    expect(page.get_by_role("heading", name="invoice-7")).to_be_visible()
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    client = Client()
    client.force_login(viewer)
    assert client.post(f"/inbox/{row.pk}/retry/").status_code == 403
    row.refresh_from_db()
    assert row.status == Status.QUARANTINED
