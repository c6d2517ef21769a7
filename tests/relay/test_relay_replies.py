"""The relay's replies to an application speaking smtplib (a real relay and SMTP server on loopback):
what it advertises, what it accepts into the outbox, and each refusal with its code and text."""

from __future__ import annotations

import base64
import email
import logging
import smtplib
import socket
import threading
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailgate.conf import RelayConfig
from mailgate.console.relay import configured_relay
from mailgate.keys.models import APIKey
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.outbox.worker import Deliverer
from mailgate.relay import submission
from mailgate.servers.models import MailServer
from tests.relay.conftest import RunningRelay
from tests.smtpsink import SMTPSink

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

SENDER = "erp@contoso.example"


@pytest.fixture
def sink() -> Iterator[SMTPSink]:
    with SMTPSink(pipelining=True, chunking="yes") as running:
        yield running


@pytest.fixture
def office(sink: SMTPSink, transactional_db: None) -> MailServer:
    return MailServer.objects.create(
        name="Office relay",
        auth_method="password",
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_security="none",
        from_filter="contoso.example",
        max_message_bytes=30 * 1024 * 1024,
    )


def deliver_all() -> None:
    deliverer = Deliverer()
    stop = threading.Event()
    try:
        for _ in range(20):
            if not deliverer.step(stop):
                return
        raise AssertionError("the worker kept finding work")
    finally:
        deliverer.close_all()


def invoice(subject: str = "Invoice 7", to: str = "ann@example.org") -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"ERP <{SENDER}>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("Please find the invoice attached.\n")
    return message


def test_ehlo_advertises_the_extensions_and_auth_only_after_starttls(
    office: MailServer, running_relay: RunningRelay
) -> None:
    client = running_relay.connect(starttls=False, login=False)
    before = set(client.esmtp_features)
    assert {"size", "pipelining", "8bitmime", "smtputf8", "chunking", "starttls"} <= before
    assert "auth" not in before
    assert client.esmtp_features["size"] == str(30 * 1024 * 1024)  # the largest server's limit
    client.starttls(context=running_relay.client_context())
    client.ehlo("app.example")
    assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
    assert "starttls" not in client.esmtp_features
    client.quit()


def test_a_message_is_committed_before_250_and_delivered_once(
    office: MailServer, running_relay: RunningRelay, sink: SMTPSink
) -> None:
    client = running_relay.connect()
    refused = client.send_message(invoice(), to_addrs=["ann@example.org", "bob@example.org"])
    assert refused == {}
    code, _ = client.noop()
    assert code == 250
    queued = OutgoingMessage.objects.get()
    assert queued.source == "smtp" and queued.status == Status.QUEUED
    key = APIKey.objects.get(name=running_relay.key_name)
    assert queued.submitted_by == key.owner_tag and key.last_used_at is not None
    assert queued.from_address == SENDER and queued.to == ["ann@example.org", "bob@example.org"]
    client.quit()
    deliver_all()
    (received,) = sink.received
    assert sorted(received.rcpt_tos) == ["ann@example.org", "bob@example.org"]
    assert email.message_from_bytes(received.data)["Message-ID"] == queued.message_id
    assert OutgoingMessage.objects.get().status == Status.SENT


def test_auth_login_and_the_queue_id_in_the_reply(
    office: MailServer, running_relay: RunningRelay
) -> None:
    client = smtplib.SMTP("localhost", running_relay.port, timeout=30)
    client.starttls(context=running_relay.client_context())
    client.ehlo("app.example")
    client.user, client.password = running_relay.key_name, running_relay.key
    code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
    assert code == 235
    client.mail(SENDER)
    client.rcpt("ann@example.org")
    code, reply = client.data(invoice().as_bytes())
    message = OutgoingMessage.objects.get()
    assert (code, reply.decode()) == (250, f"2.0.0 OK queued as {message.pk}")
    client.quit()


def test_pipelined_commands_and_bdat_chunks(
    office: MailServer, running_relay: RunningRelay, sink: SMTPSink
) -> None:
    """MAIL, two RCPTs and the content in two BDAT chunks written at once, replies read after."""
    client = running_relay.connect()
    data = invoice("Chunked").as_bytes().replace(b"\n", b"\r\n")
    first, second = data[:100], data[100:]
    client.send(
        f"MAIL FROM:<{SENDER}> SIZE={len(data)}\r\nRCPT TO:<ann@example.org>\r\n"
        f"RCPT TO:<bob@example.org>\r\nBDAT {len(first)}\r\n".encode()
        + first
        + f"BDAT {len(second)} LAST\r\n".encode()
        + second
    )
    replies = [client.getreply() for _ in range(5)]
    assert [code for code, _ in replies] == [250, 250, 250, 250, 250]
    assert replies[3][1] == f"2.0.0 {len(first)} octets received".encode()
    client.quit()
    deliver_all()
    (received,) = sink.received
    assert received.data.replace(b"\r\n", b"\n").endswith(invoice("Chunked").get_content().encode())


def test_data_read_in_blocks_keeps_every_byte_and_undoes_dot_stuffing(
    office: MailServer, running_relay: RunningRelay, sink: SMTPSink
) -> None:
    """DATA is read in blocks, not line by line: lines that start with dots (stuffed by the
    client), lines that end with a dot, a lone-dot line inside the text, a body larger than the
    reader's block, and a command pipelined right after the final dot all come through exactly."""
    client = running_relay.connect()
    lines = [".", "..two dots", "ends with a dot.", ".starts with one", "", "x" * 990 + "."]
    body = "\n".join(lines + ["filler line " * 70] * 600) + "\n"  # about 500 KB
    message = invoice("Dots")
    message.set_content(body, cte="7bit")
    wire = message.as_bytes().replace(b"\n", b"\r\n")
    stuffed = (b"\r\n" + wire).replace(b"\r\n.", b"\r\n..")[2:]
    client.send(
        f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<ann@example.org>\r\nDATA\r\n".encode()
        + stuffed
        + b".\r\nRSET\r\n"
    )
    replies = [client.getreply() for _ in range(5)]
    assert [code for code, _ in replies] == [250, 250, 354, 250, 250]
    assert OutgoingMessage.objects.get().raw.endswith(wire)  # (Message-ID and Date added before)
    # An empty line of dots: the message right after the terminator of the one before.
    code, _ = client.mail(SENDER)
    assert code == 250
    client.rcpt("bob@example.org")
    code, _ = client.data(invoice("Second").as_bytes())
    assert code == 250
    assert OutgoingMessage.objects.count() == 2
    client.quit()
    deliver_all()
    assert sink.received[0].data.endswith(body.replace("\n", "\r\n").encode())


def test_an_empty_data_and_a_line_too_long_are_refused_and_the_session_goes_on(
    office: MailServer, running_relay: RunningRelay
) -> None:
    client = running_relay.connect()
    client.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<ann@example.org>\r\nDATA\r\n.\r\n".encode())
    replies = [client.getreply() for _ in range(4)]
    assert [code for code, _ in replies[:3]] == [250, 250, 354]
    assert replies[3][0] >= 500  # nothing to queue: no From header
    long_line = invoice("Long").as_bytes().replace(b"\n", b"\r\n") + b"y" * 1200 + b"\r\n"
    client.send(
        f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<ann@example.org>\r\nDATA\r\n".encode()
        + long_line
        + b".\r\n"
    )
    replies = [client.getreply() for _ in range(4)]
    assert [code for code, _ in replies] == [250, 250, 354, 500]
    assert b"1000 octets" in replies[3][1]
    assert client.noop()[0] == 250
    assert OutgoingMessage.objects.count() == 0
    client.quit()


def test_utf8_addresses_with_smtputf8(
    office: MailServer, running_relay: RunningRelay, sink: SMTPSink
) -> None:
    """An internationalised domain in the envelope (SMTPUTF8) is queued in its ASCII form."""
    client = running_relay.connect()
    message = invoice("Grüße", to="Jürgen <jurgen@bücher.example>")
    client.send_message(message, mail_options=["SMTPUTF8"])
    queued = OutgoingMessage.objects.get()
    assert queued.to == ["jurgen@xn--bcher-kva.example"]
    client.quit()
    deliver_all()
    assert sink.received[0].rcpt_tos == ["jurgen@xn--bcher-kva.example"]


def test_wrong_credentials_get_535(office: MailServer, running_relay: RunningRelay) -> None:
    client = running_relay.connect(login=False)
    for user, password in [
        (running_relay.key_name, "mg_not-the-key"),
        ("someone-else", running_relay.key),  # the right key under another name
    ]:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(user, password)
        assert refused.value.smtp_code == 535
        assert b"the username is the API key's name" in refused.value.smtp_error
    client.quit()


def test_a_key_without_the_send_scope_or_revoked_cannot_log_in(
    office: MailServer, running_relay: RunningRelay
) -> None:
    _, reader = APIKey.issue("dashboards", scope="read")
    client = running_relay.connect(login=False)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        client.login("dashboards", reader)
    APIKey.objects.get(name=running_relay.key_name).revoke()
    with pytest.raises(smtplib.SMTPAuthenticationError):
        client.login(running_relay.key_name, running_relay.key)
    client.quit()


def test_auth_before_starttls_gets_538_and_mail_before_auth_530(
    office: MailServer, running_relay: RunningRelay
) -> None:
    client = running_relay.connect(starttls=False, login=False)
    code, reply = client.docmd("AUTH", "PLAIN AGVycC0xAHNlY3JldA==")
    assert code == 538 and b"Encryption required" in reply
    code, reply = client.docmd("MAIL", f"FROM:<{SENDER}>")
    assert code == 530 and b"Authentication required" in reply
    client.quit()


@pytest.mark.parametrize("plain_on_loopback", [True, False])
def test_the_setting_decides_whether_this_machine_logs_in_without_tls(
    office: MailServer, settings: object, tmp_path: Path, plain_on_loopback: bool
) -> None:
    """The relay that `mailgate relay` starts from the settings (MAILGATE_SMTP_PLAIN_ON_LOOPBACK)."""
    settings.MAILGATE_HOME = tmp_path  # type: ignore[attr-defined]
    relay = configured_relay(
        RelayConfig(listen=("127.0.0.1", 0), plain_on_loopback=plain_on_loopback)
    )
    assert relay is not None
    _, key = APIKey.issue("scanner", scope="send")
    with relay:
        assert relay.port is not None
        client = smtplib.SMTP("127.0.0.1", relay.port, timeout=60)
        try:
            client.ehlo("scanner.corp.local")
            assert client.has_extn("auth") is plain_on_loopback
            code, reply = client.docmd("AUTH", "PLAIN " + plain_credentials("scanner", key))
            if plain_on_loopback:
                assert code == 235
            else:
                assert code == 538 and b"Encryption required" in reply
        finally:
            client.quit()


def plain_credentials(username: str, password: str) -> str:
    return base64.b64encode(f"\0{username}\0{password}".encode()).decode()


def test_plain_auth_without_tls_only_on_loopback_when_allowed(
    office: MailServer, start_relay: Callable[..., RunningRelay]
) -> None:
    running = start_relay(plain_on_loopback=True)
    client = running.connect(starttls=False)  # logs in without STARTTLS
    client.send_message(invoice())
    assert OutgoingMessage.objects.count() == 1
    client.quit()


def test_implicit_tls_listener(
    office: MailServer, start_relay: Callable[..., RunningRelay]
) -> None:
    running = start_relay(listen_tls=True)
    assert running.relay.tls_port is not None
    client = smtplib.SMTP_SSL(
        "localhost", running.relay.tls_port, context=running.client_context(), timeout=30
    )
    client.ehlo("app.example")
    assert "starttls" not in client.esmtp_features and "auth" in client.esmtp_features
    client.login(running.key_name, running.key)
    client.send_message(invoice())
    assert OutgoingMessage.objects.count() == 1
    client.quit()


def test_a_from_outside_the_filter_gets_553_naming_the_filter(
    office: MailServer, running_relay: RunningRelay
) -> None:
    client = running_relay.connect()
    code, reply = client.mail("ceo@fabrikam.example")
    assert code == 553
    assert reply.startswith(b"5.7.1 from: no active mail server accepts ceo@fabrikam.example")
    assert b"From Filter" in reply
    # A From header outside the filter behind an allowed envelope sender is refused at DATA.
    forged = invoice()
    forged.replace_header("From", "ceo@fabrikam.example")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(SENDER, ["ann@example.org"], forged.as_bytes())
    assert refused.value.smtp_code == 553 and b"fabrikam" in refused.value.smtp_error
    assert OutgoingMessage.objects.count() == 0
    client.quit()


def test_the_ehlo_reply_comes_in_one_piece_with_the_size_of_the_moment(
    office: MailServer, running_relay: RunningRelay
) -> None:
    """The EHLO reply's lines are sent together (one read takes them all, up to the last line,
    "250 ..."), and the SIZE comes from the servers, read again once SIZE_CACHE_SECONDS passed."""

    def ehlo_reply(sock: socket.socket) -> bytes:
        sock.sendall(b"EHLO app.example\r\n")
        return sock.recv(65536)

    with socket.create_connection(("127.0.0.1", running_relay.port), timeout=30) as sock:
        assert sock.recv(1024).startswith(b"220 ")
        reply = ehlo_reply(sock)
        lines = reply.split(b"\r\n")
        assert lines[-1] == b"" and lines[-2].startswith(b"250 ")
        assert all(line.startswith(b"250-") for line in lines[:-2])
        assert f"250-SIZE {30 * 1024 * 1024}".encode() in lines
        # A smaller limit shows once the advertised size is read again.
        office.max_message_bytes = 5_000_000
        office.save()
        assert b"250-SIZE 31457280" in ehlo_reply(sock)  # still the value read at the first EHLO
        running_relay.relay.size._at -= submission.SIZE_CACHE_SECONDS + 1
        assert b"250-SIZE 5000000\r\n" in ehlo_reply(sock)


def test_a_login_logs_no_warning(
    office: MailServer, running_relay: RunningRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """A good login leaves nothing for an operator to read at WARNING (aiosmtpd's own notice
    that Session.login_data is deprecated, which it would log at every login, included)."""
    with caplog.at_level(logging.WARNING):
        running_relay.connect().quit()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_an_oversized_message_gets_552(
    office: MailServer, running_relay: RunningRelay, settings: object
) -> None:
    client = running_relay.connect()
    limit = int(client.esmtp_features["size"])
    code, _ = client.mail(SENDER, [f"SIZE={limit + 1}"])
    assert code == 552
    client.rset()
    # Announced small, sent large: the bytes past the limit are refused too.
    big = invoice("Big")
    big.add_attachment(b"x" * (limit + 1024), maintype="application", subtype="octet-stream")
    with pytest.raises(smtplib.SMTPException) as refused:
        client.sendmail(SENDER, ["ann@example.org"], big.as_bytes())
    assert "552" in str(refused.value)
    assert OutgoingMessage.objects.count() == 0


def test_a_message_over_its_servers_limit_gets_552(
    office: MailServer, sink: SMTPSink, running_relay: RunningRelay
) -> None:
    """The SIZE advertised is the largest server's; a smaller server's limit binds at DATA."""
    MailServer.objects.filter(pk=office.pk).update(max_message_bytes=2000)
    MailServer.objects.create(
        name="Big files",
        auth_method="password",
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_security="none",
        from_filter="other.example",
        max_message_bytes=30 * 1024 * 1024,
    )
    client = running_relay.connect()
    message = invoice()
    message.set_content("x" * 5000)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        client.send_message(message)
    assert refused.value.smtp_code == 552
    assert b"5.3.4 raw: the message is" in refused.value.smtp_error
    assert b"'Office relay'" in refused.value.smtp_error
    client.quit()


def test_too_many_recipients_get_452(
    office: MailServer, running_relay: RunningRelay, settings: object
) -> None:
    settings.MAILGATE_MAX_RECIPIENTS = 3  # type: ignore[attr-defined]
    client = running_relay.connect()
    client.mail(SENDER)
    codes = [client.rcpt(f"r{i}@example.org") for i in range(4)]
    assert [c for c, _ in codes] == [250, 250, 250, 452]
    assert b"MAILGATE_MAX_RECIPIENTS" in codes[3][1]
    code, _ = client.data(invoice().as_bytes())
    assert code == 250  # the first three are queued; the client sends the fourth again
    assert len(OutgoingMessage.objects.get().to) == 3
    client.quit()


def test_a_bad_recipient_gets_553_naming_the_address(
    office: MailServer, running_relay: RunningRelay
) -> None:
    client = running_relay.connect()
    client.mail(SENDER)
    code, reply = client.rcpt("ann@example.invalid")
    assert code == 553 and b"ann@example.invalid" in reply
    client.quit()


def test_the_key_rate_limit_answers_451(
    office: MailServer, running_relay: RunningRelay, settings: object
) -> None:
    """Each message counts once: at MAIL FROM, or at the end of DATA when the connection's
    sender check was reused (one database job per message); past the limit both answer 451."""
    settings.MAILGATE_API_RATE_LIMIT = 2  # type: ignore[attr-defined]
    client = running_relay.connect()
    client.send_message(invoice())
    client.send_message(invoice())
    with pytest.raises(smtplib.SMTPDataError) as refused:
        client.send_message(invoice())
    assert refused.value.smtp_code == 451
    assert b"MAILGATE_API_RATE_LIMIT" in refused.value.smtp_error
    code, reply = client.mail(SENDER)
    assert code == 451 and b"MAILGATE_API_RATE_LIMIT" in reply
    assert OutgoingMessage.objects.count() == 2
    client.quit()


def test_a_key_revoked_while_connected_cannot_queue_more(
    office: MailServer, running_relay: RunningRelay
) -> None:
    client = running_relay.connect()
    client.send_message(invoice())
    APIKey.objects.get(name=running_relay.key_name).revoke()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        client.send_message(invoice())  # MAIL FROM reused the check; DATA asks again
    assert refused.value.smtp_code == 535 and b"revoked" in refused.value.smtp_error
    assert client.mail(SENDER)[0] == 535
    assert OutgoingMessage.objects.count() == 1
    client.quit()


def test_an_unavailable_queue_answers_451_and_keeps_nothing(
    office: MailServer, running_relay: RunningRelay
) -> None:
    """The outbox table cannot be written (it is locked away by a rename): 451, the client retries."""
    from django.db import connection

    client = running_relay.connect()
    client.mail(SENDER)
    client.rcpt("ann@example.org")
    table = OutgoingMessage._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        code, reply = client.data(invoice().as_bytes())
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
    assert code == 451 and reply.startswith(b"4.3.0")
    assert OutgoingMessage.objects.count() == 0
    client.quit()


def test_a_client_that_hangs_up_mid_message_queues_nothing(
    office: MailServer, running_relay: RunningRelay
) -> None:
    client = running_relay.connect()
    client.mail(SENDER)
    client.rcpt("ann@example.org")
    client.send(b"BDAT 1000\r\n" + b"x" * 10)
    assert client.sock is not None
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    with smtplib.SMTP("localhost", running_relay.port, timeout=10) as again:
        assert again.noop()[0] == 250
    assert OutgoingMessage.objects.count() == 0
