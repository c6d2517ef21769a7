"""Applications send through the relay and the mail arrives, once, at the sandbox's Exchange-like
SMTP server (STARTTLS, AUTH XOAUTH2 with the token of a real sign-in)."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.outbox.worker import Deliverer
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer
from tests.outbox.test_sandbox_xoauth2 import connect, exchange, idp, run_until_idle
from tests.relay.apps import django_app
from tests.relay.conftest import RunningRelay

__all__ = ["exchange", "idp"]

ATTACHMENT = 20 * 1024 * 1024


@pytest.fixture
def outlook(idp: Sandbox, transactional_db: None) -> MailServer:
    demo = idp.demo
    host, _, port = idp.address("smtp").rpartition(":")
    server = MailServer.objects.create(
        name="Contoso",
        auth_method="outlook",
        username=demo["user"],
        client_id=demo["client_id"],
        client_secret=demo["client_secret"],
        smtp_host=host,
        smtp_port=int(port),
        smtp_security="starttls",
        limit_per_minute=1000,
        max_message_bytes=35 * 1024 * 1024,  # Exchange Online's documented limit
    )
    connect(idp, server)
    idp.control.call("clear_messages")
    return server


def deliver() -> None:
    deliverer = Deliverer()
    try:
        run_until_idle(deliverer)
    finally:
        deliverer.close_all()


def stored(idp: Sandbox, queue_id: str) -> email.message.EmailMessage:
    raw = idp.control.call("message", id=queue_id)["raw"]
    parsed = email.message_from_string(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def test_smtplib_sends_a_20_mb_attachment_and_utf8_through_the_relay_to_outlook(
    idp: Sandbox, outlook: MailServer, running_relay: RunningRelay
) -> None:
    sender = idp.demo["user"]
    message = EmailMessage()
    message["From"] = f"Büro <{sender}>"
    message["To"] = "Jürgen <jurgen@bücher.example>"
    message["Subject"] = "Lieferschein Größe 20 MB"
    message.set_content("Grüße aus der Buchhaltung.\n")
    message.add_attachment(
        b"\x89PNG" + bytes(range(256)) * (ATTACHMENT // 256),
        maintype="image",
        subtype="png",
        filename="scan.png",
    )
    client = running_relay.connect()
    assert client.send_message(message, mail_options=["SMTPUTF8"]) == {}
    client.quit()
    queued = OutgoingMessage.objects.get()
    assert queued.size > ATTACHMENT
    deliver()
    queued.refresh_from_db()
    assert queued.status == Status.SENT
    summaries = [m for m in idp.control.messages() if m["id"] == queued.queue_id]
    assert len(summaries) == 1 and summaries[0]["rcpt_tos"] == ["jurgen@xn--bcher-kva.example"]
    arrived = stored(idp, queued.queue_id)
    assert arrived["Message-ID"] == queued.message_id
    assert arrived["Subject"] == "Lieferschein Größe 20 MB"
    (attachment,) = list(arrived.iter_attachments())
    assert len(attachment.get_content()) == len(b"\x89PNG") + (ATTACHMENT // 256) * 256
    assert len(idp.control.messages()) == 1  # exactly once


def test_djangos_smtp_backend_sends_through_the_relay_to_outlook(
    idp: Sandbox, outlook: MailServer, running_relay: RunningRelay
) -> None:
    sender = idp.demo["user"]
    done = django_app(
        running_relay.port,
        running_relay.key_name,
        running_relay.key,
        running_relay.ca_file,
        [
            {
                "subject": f"Order {i}",
                "body": "Thank you.",
                "from": sender,
                "to": [f"c{i}@example.org"],
            }
            for i in range(3)
        ],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    deliver()
    queued = list(OutgoingMessage.objects.all())
    assert {m.status for m in queued} == {Status.SENT} and len(queued) == 3
    arrived = idp.control.messages()
    assert sorted(m["subject"] for m in arrived) == ["Order 0", "Order 1", "Order 2"]
    assert sorted(m["id"] for m in arrived) == sorted(m.queue_id for m in queued)


def test_an_address_outside_send_as_is_refused_at_mail_from(
    idp: Sandbox, outlook: MailServer, running_relay: RunningRelay
) -> None:
    """The Outlook server may send as its signed-in mailbox only: another From is a 553."""
    client = running_relay.connect()
    code, reply = client.mail("someone.else@contoso.example")
    assert code == 553 and b"5.7.1" in reply
    assert client.rcpt("ann@example.org")[0] == 503  # no transaction was started
    client.quit()
    assert OutgoingMessage.objects.count() == 0


def test_a_utf8_recipient_reaches_outlook_with_smtputf8(
    idp: Sandbox, outlook: MailServer, running_relay: RunningRelay
) -> None:
    """The sandbox's Exchange-like server offers SMTPUTF8: a local part that is not ASCII arrives."""
    sender = idp.demo["user"]
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "Jürgen <jürgen@bücher.example>"
    message["Subject"] = "Grüße an Jürgen"
    message.set_content("Hallo.\n")
    client = running_relay.connect()
    assert client.send_message(message, mail_options=["SMTPUTF8"]) == {}
    client.quit()
    deliver()
    queued = OutgoingMessage.objects.get()
    assert queued.status == Status.SENT, queued.last_error
    (summary,) = idp.control.messages()
    assert summary["rcpt_tos"] == ["jürgen@xn--bcher-kva.example"]
    assert str(stored(idp, queued.queue_id)["To"]) == "Jürgen <jürgen@bücher.example>"
