"""Hand-off: REST polling in arrival order, the message_received signal, signed webhooks to a real
receiver on loopback, and Quarantine for a handler or endpoint that keeps failing."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from django.test import Client

from mailgate.api.models import APIKey
from mailgate.inbox import handoff
from mailgate.inbox.fetcher import fetch_server
from mailgate.inbox.models import IncomingMessage, Status, WebhookDelivery
from mailgate.inbox.signals import message_received
from mailgate.servers.models import MailServer
from tests.inbox.conftest import Mailbox, message

SECRET = "whsec-test-signing-secret"


class Receiver:
    """A webhook endpoint on loopback that checks the signature like an application would."""

    def __init__(self) -> None:
        self.status = 200
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                good = hmac.compare_digest(self.headers.get("X-Mailgate-Signature", ""), expected)
                if not good:
                    outer.bad_signatures += 1
                    self.send_response(401)
                else:
                    outer.received.append(
                        {
                            "delivery": self.headers["X-Mailgate-Delivery"],
                            "body": json.loads(body),
                        }
                    )
                    self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/mail"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def api(db: None) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {APIKey.issue('erp', scope='read')[1]}"}


def test_a_send_key_cannot_read_incoming_mail(client: Client, db: None) -> None:
    send_only = {"HTTP_AUTHORIZATION": f"Bearer {APIKey.issue('app', scope='send')[1]}"}
    response = client.get("/api/v1/inbox", **send_only)
    assert response.status_code == 403
    assert "read" in response.json()["detail"]


def with_attachment(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "billing@supplier.example"
    msg["To"] = "sales@contoso.example, ap@contoso.example"
    msg["Cc"] = "boss@contoso.example"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject}@supplier.example>"
    msg.set_content("Please find the invoice attached.")
    msg.add_alternative("<p>Please find the <b>invoice</b> attached.</p>", subtype="html")
    msg.add_attachment(
        b"%PDF-1.4 invoice", maintype="application", subtype="pdf", filename="inv.pdf"
    )
    return msg.as_bytes().replace(b"\n", b"\r\n")


def take(server: MailServer, mailbox: Mailbox, *raws: bytes) -> None:
    server.fetch_existing = True
    server.save()
    for raw in raws:
        mailbox.append(raw)
    server.refresh_from_db()
    assert fetch_server(server).ok


def test_rest_lists_in_arrival_order_with_a_cursor_and_serves_bytes_and_attachments(
    imap_server: MailServer, mailbox: Mailbox, api: dict[str, str], client: Client
) -> None:
    invoice = with_attachment("invoice-1")
    take(imap_server, mailbox, invoice, message("second"), message("third"))
    page = client.get(f"/api/v1/inbox?server={imap_server.name}&limit=2", **api).json()
    assert [i["subject"] for i in page["items"]] == ["invoice-1", "second"]
    first = page["items"][0]
    assert set(first) == {
        "id", "server", "folder", "message_id", "from", "to", "cc", "subject", "date",
        "received_at", "size", "attachments", "status",
    }  # fmt: skip
    assert first["from"] == "billing@supplier.example"
    assert first["to"] == ["sales@contoso.example", "ap@contoso.example"]
    assert first["cc"] == ["boss@contoso.example"]
    assert first["attachments"] == [
        {"filename": "inv.pdf", "content_type": "application/pdf", "size": 16}
    ]
    assert first["status"] == "received" and first["folder"] == "INBOX"
    rest = client.get(f"/api/v1/inbox?after={page['next']}", **api).json()
    assert [i["subject"] for i in rest["items"]] == ["third"]
    empty = client.get(f"/api/v1/inbox?after={rest['next']}", **api).json()
    assert empty == {"items": [], "next": None}

    detail = client.get(f"/api/v1/inbox/{first['id']}", **api).json()
    assert detail["text"].strip() == "Please find the invoice attached."
    assert "<b>invoice</b>" in detail["html"]
    assert {"name": "Subject", "value": "invoice-1"} in detail["headers"]
    raw = client.get(f"/api/v1/inbox/{first['id']}/raw", **api)
    assert raw["Content-Type"] == "message/rfc822"
    assert raw.content == invoice
    pdf = client.get(f"/api/v1/inbox/{first['id']}/attachments/0", **api)
    assert pdf.content == b"%PDF-1.4 invoice" and pdf["Content-Type"] == "application/pdf"
    assert "inv.pdf" in pdf["Content-Disposition"]
    assert client.get(f"/api/v1/inbox/{first['id']}/attachments/1", **api).status_code == 404


def test_rest_refuses_bad_input_naming_the_field(
    db: None, api: dict[str, str], client: Client
) -> None:
    bad = client.get("/api/v1/inbox?after=abc", **api)
    assert bad.status_code == 400 and "after" in bad.json()["errors"]
    bad = client.get("/api/v1/inbox?server=nope", **api)
    assert bad.status_code == 400 and "server" in bad.json()["errors"]
    assert client.get("/api/v1/inbox?limit=0", **api).status_code == 422
    assert client.get("/api/v1/inbox").status_code == 401
    assert client.get("/api/v1/inbox/999999", **api).status_code == 404


def test_signal_and_signed_webhook(
    imap_server: MailServer, mailbox: Mailbox, receiver: Receiver
) -> None:
    imap_server.webhook_url = receiver.url
    imap_server.webhook_secret = SECRET
    imap_server.save()
    seen: list[str] = []

    def on_message(sender: Any, message: IncomingMessage, **kwargs: Any) -> None:
        seen.append(message.subject)

    message_received.connect(on_message)
    try:
        take(imap_server, mailbox, message("hook me"))
        assert handoff.hand_off() == 1
    finally:
        message_received.disconnect(on_message)
    assert seen == ["hook me"]
    assert receiver.bad_signatures == 0 and len(receiver.received) == 1
    body = receiver.received[0]["body"]
    assert body["subject"] == "hook me" and body["from"] == "billing@supplier.example"
    row = IncomingMessage.objects.get()
    assert row.status == Status.DELIVERED
    log = WebhookDelivery.objects.get()
    assert log.ok and log.status_code == 200 and log.delivery_id == receiver.received[0]["delivery"]
    assert handoff.hand_off() == 0


def test_a_failing_endpoint_retries_with_back_off_then_quarantines_and_retry_delivers(
    imap_server: MailServer, mailbox: Mailbox, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    imap_server.webhook_url = receiver.url
    imap_server.webhook_secret = SECRET
    imap_server.save()
    receiver.status = 503
    take(imap_server, mailbox, message("stuck"))
    row = IncomingMessage.objects.get()
    for attempt in range(1, handoff.MAX_ATTEMPTS + 1):
        assert handoff.hand_off() == 1
        row.refresh_from_db()
        assert row.attempts == attempt and "HTTP 503" in row.last_error
        if row.status == Status.RECEIVED:
            assert row.next_attempt_at is not None
            assert handoff.hand_off() == 0  # backing off
            IncomingMessage.objects.filter(pk=row.pk).update(next_attempt_at=None)
    assert row.status == Status.QUARANTINED
    # The mailbox keeps flowing while the endpoint fails.
    mailbox.append(message("still flowing"))
    assert fetch_server(imap_server).counts == {"INBOX": 1}
    receiver.status = 200
    handoff.retry(row)
    handoff.hand_off()
    row.refresh_from_db()
    assert row.status == Status.DELIVERED
    assert WebhookDelivery.objects.filter(message=row).count() == handoff.MAX_ATTEMPTS + 1


def test_a_failing_handler_quarantines_without_sending_the_webhook_twice(
    imap_server: MailServer, mailbox: Mailbox
) -> None:
    def broken(sender: Any, message: IncomingMessage, **kwargs: Any) -> None:
        raise RuntimeError("the ERP is down")

    take(imap_server, mailbox, message("handler fails"))
    message_received.connect(broken)
    try:
        for _ in range(handoff.MAX_ATTEMPTS):
            IncomingMessage.objects.update(next_attempt_at=None)
            handoff.hand_off()
    finally:
        message_received.disconnect(broken)
    row = IncomingMessage.objects.get()
    assert row.status == Status.QUARANTINED and "the ERP is down" in row.last_error
    handoff.retry(row)
    handoff.hand_off()
    row.refresh_from_db()
    assert row.status == Status.DELIVERED and row.last_error == ""


def test_the_console_serves_the_html_body_under_a_policy_that_loads_nothing_remote(
    imap_server: MailServer, mailbox: Mailbox, admin_client: Client
) -> None:
    take(imap_server, mailbox, with_attachment("invoice-9"))
    row = IncomingMessage.objects.get()
    page = admin_client.get(f"/inbox/{row.pk}/")
    assert f'src="/inbox/{row.pk}/html/"' in page.content.decode()
    html = admin_client.get(f"/inbox/{row.pk}/html/")
    assert html.status_code == 200 and b"<b>invoice</b>" in html.content
    policy = html["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "img-src data:;" in policy
    assert "sandbox" in policy and "script-src" not in policy
    assert html["X-Frame-Options"] == "SAMEORIGIN" and html["Referrer-Policy"] == "no-referrer"
    remote = admin_client.get(f"/inbox/{row.pk}/html/?remote=1")["Content-Security-Policy"]
    assert "img-src data: https: http:" in remote and "sandbox" in remote
    assert "script-src" not in remote
    assert admin_client.get(f"/inbox/{row.pk}/html/", follow=False).status_code == 200
    assert Client().get(f"/inbox/{row.pk}/html/").status_code == 302  # sign-in first
