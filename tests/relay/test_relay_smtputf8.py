"""Non-ASCII local parts end to end (SMTPUTF8, RFC 6531): an application sends
`MAIL FROM:<jörg@corp.local> SMTPUTF8` to the relay, the message is queued, and the worker delivers
it with SMTPUTF8 to a server that offers it; to one that does not, it fails at once naming why.
Real relay and aiosmtpd servers on loopback."""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.servers.models import MailServer
from tests.relay.conftest import RunningRelay
from tests.relay.test_relay_replies import deliver_all
from tests.smtpsink import SMTPSink

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

SENDER = "jörg@corp.local"


def server_for(sink: SMTPSink) -> MailServer:
    return MailServer.objects.create(
        name="Corp relay",
        auth_method="password",
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_security="none",
        from_filter="corp.local",
    )


@pytest.fixture
def utf8_sink(transactional_db: None) -> Iterator[SMTPSink]:
    with SMTPSink(pipelining=True, chunking="yes", smtputf8=True) as running:
        server_for(running)
        yield running


@pytest.fixture
def ascii_sink(transactional_db: None) -> Iterator[SMTPSink]:
    """A server that does not offer SMTPUTF8 (aiosmtpd's default)."""
    with SMTPSink(pipelining=True, chunking="yes") as running:
        server_for(running)
        yield running


def letter(to: str = "Ünal <ünal@host.test>") -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Jörg Müller <{SENDER}>"
    message["To"] = to
    message["Subject"] = "Grüße"
    message.set_content("Hallo.\n")
    return message


def test_the_relay_queues_a_utf8_sender_and_the_worker_delivers_it_with_smtputf8(
    utf8_sink: SMTPSink, running_relay: RunningRelay
) -> None:
    client = running_relay.connect()
    assert "smtputf8" in client.esmtp_features
    assert client.send_message(letter(), mail_options=["SMTPUTF8"]) == {}
    client.quit()
    queued = OutgoingMessage.objects.get()
    assert queued.from_address == SENDER and queued.to == ["ünal@host.test"]
    deliver_all()
    queued.refresh_from_db()
    assert queued.status == Status.SENT
    (received,) = utf8_sink.received
    assert received.mail_from == SENDER and received.rcpt_tos == ["ünal@host.test"]
    assert "SMTPUTF8" in received.mail_options
    arrived = email.message_from_bytes(received.data, policy=email.policy.default)
    assert str(arrived["From"]) == f"Jörg Müller <{SENDER}>"
    assert arrived["Message-ID"] == queued.message_id


def test_a_server_without_smtputf8_fails_the_message_at_once_naming_the_cause(
    ascii_sink: SMTPSink, running_relay: RunningRelay
) -> None:
    client = running_relay.connect()
    client.send_message(letter(), mail_options=["SMTPUTF8"])
    client.quit()
    deliver_all()
    failed = OutgoingMessage.objects.get()
    assert failed.status == Status.FAILED and failed.attempts == 1
    assert "does not offer SMTPUTF8" in failed.last_error and SENDER in failed.last_error
    assert "SMTPUTF8" in failed.diagnosis
    assert ascii_sink.received == []


def test_a_utf8_address_without_the_smtputf8_parameter_gets_553_5_6_7(
    utf8_sink: SMTPSink, running_relay: RunningRelay
) -> None:
    client = running_relay.connect()
    client.command_encoding = "utf-8"  # smtplib would refuse to write it otherwise
    code, reply = client.docmd("MAIL", f"FROM:<{SENDER}>")
    assert code == 553 and reply.startswith(b"5.6.7") and b"SMTPUTF8" in reply
    assert client.mail("erp@corp.local")[0] == 250
    code, reply = client.docmd("RCPT", "TO:<ünal@host.test>")
    assert code == 553 and reply.startswith(b"5.6.7")
    client.rset()
    assert client.mail(SENDER, ["SMTPUTF8"])[0] == 250
    assert client.rcpt("ünal@host.test")[0] == 250
    client.quit()


def test_a_malformed_utf8_address_is_still_refused(
    utf8_sink: SMTPSink, running_relay: RunningRelay
) -> None:
    client = running_relay.connect()
    client.mail(SENDER, ["SMTPUTF8"])
    code, _ = client.rcpt("jö rg@host.test")
    assert code in (501, 553)
    client.rset()
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        client.send_message(letter(to="ünal@host.invalid"), mail_options=["SMTPUTF8"])
    client.quit()
