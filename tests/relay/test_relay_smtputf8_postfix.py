"""`MAIL FROM:<jörg@corp.local> SMTPUTF8` through the relay to the real Postfix peer with
smtputf8_enable = yes: delivered, with SMTPUTF8, into its Maildir. (The peer as the other tests run
it does not offer SMTPUTF8: test_relay_to_postfix.py checks the failure there.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer
from tests.outbox.test_postfix_peer import (
    PASSWORD,
    PASSWORD_USER,
    env,
    identity,
    run_worker_once,
    trust_file,
)
from tests.peers.postfix import PostfixDovecotPeer
from tests.relay.conftest import RunningRelay

__all__ = ["env", "identity", "trust_file"]

SENDER = "jörg@corp.local"


@pytest.fixture(scope="module")
def peer(identity: Sandbox) -> Iterator[PostfixDovecotPeer]:
    with PostfixDovecotPeer(
        introspection_url=f"{identity.http_url}/sandbox/introspect/smtp",
        password_users={PASSWORD_USER: PASSWORD},
        smtputf8=True,
    ) as running:
        yield running


def corp_server(peer: PostfixDovecotPeer) -> MailServer:
    """A password server on the peer's submission port that sends for corp.local."""
    return MailServer.objects.create(
        name="Corp via Postfix",
        auth_method="password",
        username=PASSWORD_USER,
        password=PASSWORD,
        smtp_host=peer.host,
        smtp_port=peer.submission_port,
        smtp_security="starttls",
        from_filter="corp.local",
    )


def send_utf8(relay: RunningRelay) -> str:
    """Send Jörg's message to a new recipient whose local part is not ASCII; the recipient."""
    recipient = f"ünal-{uuid.uuid4().hex[:8]}@example.org"
    message = EmailMessage()
    message["From"] = f"Jörg <{SENDER}>"
    message["To"] = recipient
    message["Subject"] = "Grüße"
    message.set_content("Hallo.\n")
    client = relay.connect()
    assert client.send_message(message, mail_options=["SMTPUTF8"]) == {}
    client.quit()
    return recipient


def test_a_utf8_sender_and_recipient_reach_postfix_with_smtputf8(
    env: PostfixDovecotPeer, running_relay: RunningRelay
) -> None:
    corp_server(env)
    recipient = send_utf8(running_relay)
    run_worker_once()
    queued = OutgoingMessage.objects.get()
    assert queued.status == Status.SENT, queued.last_error
    (arrived,) = env.wait_for_messages(recipient, 1)
    assert str(arrived["From"]) == f"Jörg <{SENDER}>"
    assert arrived["Message-ID"] == queued.message_id
    # Postfix logged the envelope as it came: the sender in UTF-8, delivered once.
    assert len(env.postfix_log_lines(rf"from=<{SENDER}>")) >= 1
    assert len(env.postfix_log_lines(rf"to=<{recipient}>, .*status=sent")) == 1
