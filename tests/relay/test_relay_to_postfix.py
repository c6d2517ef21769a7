"""Applications send through the relay and the mail arrives, once, in the Maildir of an independent
SMTP server: Postfix submission with Dovecot SASL (tests/peers), reached over XOAUTH2."""

from __future__ import annotations

from email.message import EmailMessage

from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer
from tests.outbox.test_postfix_peer import (
    address,
    env,
    identity,
    outlook,
    peer,
    run_worker_once,
    trust_file,
)
from tests.peers.postfix import PostfixDovecotPeer
from tests.relay.apps import django_app
from tests.relay.conftest import RunningRelay
from tests.relay.test_relay_smtputf8_postfix import SENDER, corp_server, send_utf8

__all__ = ["env", "identity", "outlook", "peer", "trust_file"]

ATTACHMENT = 20 * 1024 * 1024


def test_djangos_smtp_backend_sends_a_20_mb_attachment_through_the_relay_to_postfix(
    outlook: MailServer, identity: Sandbox, env: PostfixDovecotPeer, running_relay: RunningRelay
) -> None:
    MailServer.objects.filter(pk=outlook.pk).update(max_message_bytes=45 * 1024 * 1024)
    sender = identity.demo["user"]
    readers = [address("big"), address("small")]
    done = django_app(
        running_relay.port,
        running_relay.key_name,
        running_relay.key,
        running_relay.ca_file,
        [
            {
                "subject": "Scans",
                "body": "The scans of today.",
                "from": sender,
                "to": [readers[0]],
                "attachments": [["scans.pdf", ATTACHMENT]],
            },
            {"subject": "Note", "body": "A short note.", "from": sender, "to": [readers[1]]},
        ],
    )
    assert done.returncode == 0, done.stderr
    run_worker_once()
    queued = {m.subject: m for m in OutgoingMessage.objects.all()}
    assert {m.status for m in queued.values()} == {Status.SENT}
    (big,) = env.wait_for_messages(readers[0], 1, timeout=60)
    assert big["Message-ID"] == queued["Scans"].message_id
    (pdf,) = list(big.iter_attachments())
    assert len(pdf.get_content()) == len(b"%PDF-1.4 ") + ATTACHMENT
    (small,) = env.wait_for_messages(readers[1], 1)
    assert small["Message-ID"] == queued["Note"].message_id
    # Exactly once: Postfix logged one delivery per message.
    for reader in readers:
        assert len(env.wait_for_log_lines(rf"to=<{reader}>, .*status=sent")) == 1


def test_smtplib_with_utf8_and_pipelined_bdat_through_the_relay_to_postfix(
    outlook: MailServer, identity: Sandbox, env: PostfixDovecotPeer, running_relay: RunningRelay
) -> None:
    sender = identity.demo["user"]
    local = address("utf8").split("@")[0]
    message = EmailMessage()
    message["From"] = f"Büro <{sender}>"
    message["To"] = f"{local}@bücher.example"
    message["Subject"] = "Grüße"
    message.set_content("Grüße.\n")
    data = message.as_bytes().replace(b"\n", b"\r\n")
    client = running_relay.connect()
    client.send(
        f"MAIL FROM:<{sender}> SMTPUTF8\r\nRCPT TO:<{local}@bücher.example>\r\n".encode()
        + f"BDAT {len(data)} LAST\r\n".encode()
        + data
    )
    assert [client.getreply()[0] for _ in range(3)] == [250, 250, 250]
    client.quit()
    run_worker_once()
    (arrived,) = env.wait_for_messages(f"{local}@xn--bcher-kva.example", 1)
    assert arrived["Subject"] == "Grüße"
    assert arrived["Message-ID"] == OutgoingMessage.objects.get().message_id


def test_a_utf8_address_fails_at_once_naming_smtputf8_where_postfix_does_not_offer_it(
    env: PostfixDovecotPeer, running_relay: RunningRelay
) -> None:
    """The peer runs with smtputf8_enable = no: nothing is sent, the message fails saying why."""
    corp_server(env)
    recipient = send_utf8(running_relay)
    run_worker_once()
    failed = OutgoingMessage.objects.get()
    assert failed.status == Status.FAILED and failed.attempts == 1
    assert "does not offer SMTPUTF8" in failed.last_error and SENDER in failed.last_error
    assert env.postfix_log_lines(rf"from=<{SENDER}>") == []
    assert env.messages(recipient) == []
