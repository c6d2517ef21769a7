"""The Inbox page in a real browser: mail fetched from Dovecot, a quarantined message, its
headers, bodies and attachment download, and Retry (administrators only)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
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


class Tracker:
    """A loopback web server standing for a sender's tracking pixels and remote styles: it
    records every path a browser asks it for."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                body = b"body { color: red }" if self.path.endswith(".css") else b"GIF89a"
                self.send_response(200)
                self.send_header("Content-Type", "text/css" if b"{" in body else "image/gif")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, path: str, seconds: float = 10) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if path in self.hits:
                return True
            time.sleep(0.05)
        return False


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    found = Tracker()
    thread = threading.Thread(target=found.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        found.server.shutdown()
        found.server.server_close()
        thread.join(timeout=10)


def tracking_message(base: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "news@shop.example"
    msg["To"] = "sales@contoso.example"
    msg["Subject"] = "spring offers"
    msg["Message-ID"] = "<spring-offers@shop.example>"
    msg.set_content("Spring offers inside.")
    msg.add_alternative(
        f'<html><head><link rel="stylesheet" href="{base}/style.css">'
        f'<meta http-equiv="refresh" content="0;url={base}/refresh"></head>'
        f'<body><p>Spring <b>offers</b></p><img src="{base}/pixel.gif" alt="pixel">'
        f'<div style="background-image:url({base}/background.gif)">text</div>'
        f'<img src="x" onerror="fetch(\'{base}/onerror\')">'
        f'<script>fetch("{base}/script"); document.body.append("SCRIPT RAN")</script>'
        "</body></html>",
        subtype="html",
    )
    return msg.as_bytes().replace(b"\n", b"\r\n")


def test_the_html_body_loads_nothing_remote_until_asked_and_never_runs_scripts(
    page: Page,
    transactional_db: None,
    password_dovecot: PasswordDovecot,  # noqa: F811
    mailbox: Mailbox,  # noqa: F811
    trust: None,  # noqa: F811
    settings: Any,
    tmp_path: Path,
    sign_in: Callable[[Page, str, str], None],
    tracker: Tracker,
) -> None:
    settings.MAILGATE_HOME = tmp_path
    server = make_server(password_dovecot, mailbox, fetch_existing=True)
    mailbox.append(tracking_message(tracker.base))
    assert fetch_server(server).counts == {"INBOX": 1}
    row = IncomingMessage.objects.get()
    User.objects.create_user("victor@example.com", "victor@example.com", PASSWORD)
    sign_in(page, "victor@example.com", PASSWORD)

    page.goto(f"/inbox/{row.pk}/")
    html = page.frame_locator("iframe[title='HTML body']")
    expect(html.locator("b")).to_have_text("offers")
    expect(page.get_by_role("status")).to_contain_text("Remote content")
    # Time for anything the page would load or run (the refresh fires at 0 s).
    assert not tracker.wait_for("/pixel.gif", seconds=3)
    assert tracker.hits == []
    expect(html.locator("body")).not_to_contain_text("SCRIPT RAN")

    page.get_by_role("link", name="Show remote content").click()
    html = page.frame_locator("iframe[title='HTML body']")
    expect(html.locator("b")).to_have_text("offers")
    assert tracker.wait_for("/pixel.gif") and tracker.wait_for("/style.css")
    assert tracker.wait_for("/background.gif")
    time.sleep(1)  # a script or a refresh would have had its turn
    assert not {"/script", "/onerror", "/refresh"} & set(tracker.hits), tracker.hits
    expect(html.locator("body")).not_to_contain_text("SCRIPT RAN")


def png(width: int, height: int) -> bytes:
    """A real PNG image of one colour (a browser decodes it to width x height)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xcc\x22\x22" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_inline_images_show_in_the_html_body_without_loading_anything_remote(
    page: Page,
    transactional_db: None,
    password_dovecot: PasswordDovecot,  # noqa: F811
    mailbox: Mailbox,  # noqa: F811
    trust: None,  # noqa: F811
    settings: Any,
    tmp_path: Path,
    sign_in: Callable[[Page, str, str], None],
    tracker: Tracker,
) -> None:
    """A signature logo sent as a multipart/related part (cid:) is shown from the message itself;
    a remote image beside it stays blocked."""
    settings.MAILGATE_HOME = tmp_path
    server = make_server(password_dovecot, mailbox, fetch_existing=True)
    msg = EmailMessage()
    msg["From"] = "Lena <lena@supplier.example>"
    msg["To"] = "orders@contoso.example"
    msg["Subject"] = "With our logo"
    msg.set_content("Regards, Lena")
    msg.add_alternative(
        '<p>Regards</p><img id="logo" src="cid:logo.1@supplier.example" alt="logo">'
        f'<img id="remote" src="{tracker.base}/pixel.gif" alt="remote">',
        subtype="html",
    )
    msg.get_payload()[1].add_related(
        png(40, 20), "image", "png", cid="<logo.1@supplier.example>", filename="logo.png"
    )
    mailbox.append(msg.as_bytes().replace(b"\n", b"\r\n"))
    assert fetch_server(server).counts == {"INBOX": 1}
    row = IncomingMessage.objects.get()
    User.objects.create_user("victor@example.com", "victor@example.com", PASSWORD)
    sign_in(page, "victor@example.com", PASSWORD)

    page.goto(f"/inbox/{row.pk}/")
    html = page.frame_locator("iframe[title='HTML body']")
    logo = html.locator("#logo")
    expect(logo).to_be_visible()
    expect(logo).to_have_js_property("naturalWidth", 40)
    assert html.locator("#remote").evaluate("img => img.naturalWidth") == 0
    assert not tracker.wait_for("/pixel.gif", seconds=2)
