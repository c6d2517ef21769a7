"""SMTPUTF8 (RFC 6531): an address whose local part is not ASCII goes out with SMTPUTF8 to a server
that offers it, whichever way the transaction is written (pipelined with DATA or BDAT, or step by
step), and to a server that does not it is a permanent error naming the cause, with nothing sent.

Against aiosmtpd on loopback, with and without its SMTPUTF8 support turned on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgate.outbox.diagnosis import Action, classify
from mailgate.transports.base import Envelope
from mailgate.transports.credentials import Endpoint
from mailgate.transports.smtp import SMTPTransport
from tests.smtpsink import SMTPSink

pytestmark = pytest.mark.nodb

SENDER = "jörg@corp.local"
RECIPIENT = "ünal@host.test"
CONTENT = (
    "From: Jörg <jörg@corp.local>\r\nTo: ünal@host.test\r\nSubject: Grüße\r\n\r\nHallo.\r\n"
).encode()


def transport(sink: SMTPSink, **options: bool) -> SMTPTransport:
    return SMTPTransport(Endpoint("127.0.0.1", sink.port, "none"), **options)


@pytest.fixture(
    params=[(True, "yes"), (True, ""), (False, "")], ids=["bdat", "pipelined-data", "step-by-step"]
)
def utf8_sink(request: pytest.FixtureRequest) -> Iterator[tuple[SMTPSink, bool]]:
    pipelining, chunking = request.param
    with SMTPSink(pipelining=True, chunking=chunking, smtputf8=True) as running:
        yield running, pipelining


def test_a_utf8_address_goes_with_smtputf8_to_a_server_that_offers_it(
    utf8_sink: tuple[SMTPSink, bool],
) -> None:
    sink, pipelining = utf8_sink
    with transport(sink, pipelining=pipelining) as smtp:
        result = smtp.send_message(Envelope(SENDER, [RECIPIENT, "bob@example.org"], CONTENT))
        assert result.ok, result.error
        # The next message on the same connection is plain ASCII, and goes without SMTPUTF8.
        plain = smtp.send_message(Envelope("app@example.com", ["bob@example.org"], b"Hi.\r\n"))
        assert plain.ok, plain.error
    first, second = sink.received
    assert (first.mail_from, first.rcpt_tos) == (SENDER, [RECIPIENT, "bob@example.org"])
    assert "SMTPUTF8" in first.mail_options
    assert first.data == CONTENT
    assert "SMTPUTF8" not in second.mail_options


def test_utf8_headers_alone_ask_for_smtputf8_where_offered() -> None:
    with SMTPSink(pipelining=True, smtputf8=True) as sink, transport(sink) as smtp:
        envelope = Envelope("app@example.com", ["unal@host.test"], CONTENT)
        assert smtp.send_message(envelope).ok
    assert "SMTPUTF8" in sink.received[0].mail_options


@pytest.mark.parametrize("pipelining", [True, False])
def test_without_smtputf8_a_utf8_address_is_a_permanent_error_naming_it_and_nothing_is_sent(
    pipelining: bool,
) -> None:
    with SMTPSink(pipelining=True) as sink, transport(sink, pipelining=pipelining) as smtp:
        result = smtp.send_message(Envelope("app@example.com", [RECIPIENT], CONTENT))
        error = result.error
        assert error is not None and error.permanent and error.step == "mail"
        assert error.reply.code is None  # the server was not asked
        assert "does not offer SMTPUTF8" in str(error) and RECIPIENT in str(error)
        assert "RFC 6531" in str(error)
        # The connection goes on: an ASCII message after it is delivered.
        assert smtp.send_message(Envelope("app@example.com", ["bob@example.org"], b"Hi.\r\n")).ok
    assert [r.rcpt_tos for r in sink.received] == [["bob@example.org"]]
    # The outbox fails such a message at once rather than retrying it.
    verdict = classify(error)
    assert verdict.action == Action.FAIL and "SMTPUTF8" in verdict.diagnosis


def test_utf8_headers_with_ascii_addresses_still_go_to_a_server_without_smtputf8() -> None:
    """Only an address needs SMTPUTF8: a UTF-8 Subject is sent as before (8BITMIME)."""
    with SMTPSink(pipelining=True) as sink, transport(sink) as smtp:
        content = CONTENT.replace("jörg".encode(), b"jorg").replace("ünal".encode(), b"unal")
        assert smtp.send_message(Envelope("jorg@corp.local", ["unal@host.test"], content)).ok
    assert "SMTPUTF8" not in sink.received[0].mail_options
