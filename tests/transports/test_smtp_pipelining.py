"""PIPELINING (RFC 2920): MAIL FROM, RCPT TO and DATA in one write, every reply checked.

Against real servers on loopback: the aiosmtpd sink advertising PIPELINING, and a scripted socket
server for the one case aiosmtpd never produces (DATA accepted after every recipient was refused).
The writes are observed by wrapping the connection's send(), which still sends.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from mailgate.transports.base import Envelope, TransportError
from mailgate.transports.credentials import Endpoint
from mailgate.transports.smtp import SMTPTransport
from tests.smtpsink import SMTPSink

pytestmark = pytest.mark.nodb

CONTENT = b"Subject: dots\r\n\r\n.a line starting with a dot\r\n..two\r\nend\r\n"


def plain_server(port: int) -> Endpoint:
    return Endpoint("127.0.0.1", port, "none")


def spy_writes(transport: SMTPTransport) -> list[bytes]:
    """Record what each send() call writes (the real send still runs)."""
    writes: list[bytes] = []
    connection = transport.connection
    assert connection is not None
    real = connection.send

    def send(data: bytes | str) -> None:
        writes.append(data if isinstance(data, bytes) else data.encode())
        real(data)

    connection.send = send  # type: ignore[method-assign]
    return writes


@pytest.fixture(params=["", "yes", "broken"], ids=["data", "bdat", "bdat-advertised-only"])
def sink(request: pytest.FixtureRequest) -> Iterator[SMTPSink]:
    """A pipelining server: DATA only, with BDAT, and advertising CHUNKING without BDAT."""
    with SMTPSink(pipelining=True, chunking=request.param) as running:
        yield running


@pytest.fixture
def data_sink() -> Iterator[SMTPSink]:
    with SMTPSink(pipelining=True) as running:
        yield running


def envelope(*recipients: str) -> Envelope:
    return Envelope("app@example.com", list(recipients or ["a@example.org"]), CONTENT)


def test_the_envelope_goes_in_one_write_and_the_content_arrives_intact(
    data_sink: SMTPSink,
) -> None:
    sink = data_sink
    with SMTPTransport(plain_server(sink.port)) as transport:
        writes = spy_writes(transport)
        result = transport.send_message(envelope("a@example.org", "b@example.org"))
    assert result.ok and result.queue_id == "Q000001"
    assert (
        writes[0]
        == (
            f"MAIL FROM:<app@example.com> SIZE={len(CONTENT)}\r\n"
            "RCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
        ).encode()
    )
    assert b"\r\n..a line" in writes[1] and writes[1].endswith(b"end\r\n")
    assert writes[2] == b".\r\n"  # the end of the content, on its own
    assert sink.bdat_commands == 0
    (received,) = sink.received
    assert received.rcpt_tos == ["a@example.org", "b@example.org"]
    assert received.data == CONTENT  # the server undid the dot-stuffing


def test_turned_off_or_not_offered_it_goes_step_by_step() -> None:
    for offered, wanted in ((True, False), (False, True)):
        with SMTPSink(pipelining=offered) as sink:
            with SMTPTransport(plain_server(sink.port), pipelining=wanted) as transport:
                writes = spy_writes(transport)
                assert transport.send_message(envelope()).ok
            # smtplib writes "FROM:"/"TO:" before Python 3.13 and "from:"/"to:" since; SMTP
            # does not mind.
            assert writes[0].lower().startswith(b"mail from:<app@example.com>")
            assert writes[1].lower() == b"rcpt to:<a@example.org>\r\n"
            assert len(sink.received) == 1


def test_one_refused_recipient_is_reported_and_the_others_get_the_message(
    sink: SMTPSink,
) -> None:
    sink.rcpt_reply = lambda address: "550 5.1.1 No such user" if address.startswith("x") else None
    with SMTPTransport(plain_server(sink.port)) as transport:
        result = transport.send_message(envelope("x@example.org", "a@example.org"))
    assert result.ok
    assert result.refused["x@example.org"].code == 550
    assert sink.received[0].rcpt_tos == ["a@example.org"]


def test_all_recipients_refused_sends_nothing_and_prefers_the_temporary_refusal(
    sink: SMTPSink,
) -> None:
    sink.rcpt_reply = lambda address: (
        "450 4.2.1 Try later" if address.startswith("t") else "550 5.1.1 No such user"
    )
    with SMTPTransport(plain_server(sink.port)) as transport:
        result = transport.send_message(envelope("x@example.org", "t@example.org"))
        assert not result.ok
        assert result.error is not None
        assert result.error.code == 450 and not result.error.permanent
        assert result.error.step == "rcpt"
        assert set(result.refused) == {"x@example.org", "t@example.org"}
        sink.rcpt_reply = None
        assert transport.send_message(envelope()).ok  # the same connection goes on
    assert len(sink.received) == 1


def test_a_refused_sender_is_the_error_and_the_connection_goes_on(sink: SMTPSink) -> None:
    sink.mail_reply = "550 5.7.1 Client does not have permissions to send as this sender"
    with SMTPTransport(plain_server(sink.port)) as transport:
        result = transport.send_message(envelope())
        assert result.error is not None
        assert (result.error.step, result.error.code, result.error.permanent) == ("mail", 550, True)
        assert result.refused == {}
        sink.mail_reply = None
        assert transport.send_message(envelope()).ok
    assert len(sink.received) == 1


def test_a_refusal_after_the_content_is_a_data_error(sink: SMTPSink) -> None:
    sink.data_reply = "554 5.6.0 Message content rejected"
    with SMTPTransport(plain_server(sink.port)) as transport:
        result = transport.send_message(envelope())
    assert result.error is not None
    assert (result.error.step, result.error.code, result.error.permanent) == ("data", 554, True)


def test_before_data_runs_before_the_end_of_the_content_and_a_failure_there_sends_nothing(
    data_sink: SMTPSink,
) -> None:
    sink = data_sink
    events: list[str] = []
    sink.data_reply = lambda _envelope: events.append("content received") or None
    with SMTPTransport(plain_server(sink.port)) as transport:
        writes = spy_writes(transport)

        def before_data() -> None:
            events.append("before data")
            # The content is out, its end is not.
            assert writes[-1].endswith(b"end\r\n")

        assert transport.send_message(envelope(), before_data=before_data).ok
        assert events == ["before data", "content received"]
        assert writes[-1] == b".\r\n"

        def refuse() -> None:
            raise RuntimeError("the previous outcome could not be recorded")

        with pytest.raises(RuntimeError, match="could not be recorded"):
            transport.send_message(envelope(), before_data=refuse)
        # The connection was dropped mid-transaction, so the server discarded it.
        assert not transport.is_open
        assert transport.send_message(envelope()).ok  # reconnects
    assert len(sink.received) == 2


def test_421_ends_the_group_as_a_temporary_error_with_the_reply(sink: SMTPSink) -> None:
    sink.mail_reply = "421 4.3.2 Service not available, closing transmission channel"
    with SMTPTransport(plain_server(sink.port)) as transport:
        with pytest.raises(TransportError) as caught:
            transport.send_message(envelope())
        assert caught.value.code == 421 and not caught.value.permanent
        assert not transport.is_open
    assert sink.received == []


class ScriptedServer:
    """A loopback SMTP server that answers DATA with 354 although every recipient was refused."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.body_lines: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.listener.settimeout(10)
        connection, _ = self.listener.accept()
        connection.settimeout(10)
        with connection, connection.makefile("rb") as reader, contextlib.suppress(OSError):
            connection.sendall(b"220 scripted ESMTP\r\n")
            in_data = False
            for line in reader:
                if in_data:
                    self.body_lines.append(line)
                    if line == b".\r\n":
                        in_data = False
                        connection.sendall(b"554 5.5.1 No valid recipients\r\n")
                    continue
                verb = line[:4].upper()
                if verb == b"EHLO":
                    connection.sendall(b"250-scripted\r\n250 PIPELINING\r\n")
                elif verb == b"MAIL":
                    connection.sendall(b"250 2.1.0 OK\r\n")
                elif verb == b"RCPT":
                    connection.sendall(b"550 5.1.1 No such user\r\n")
                elif verb == b"DATA":
                    in_data = True
                    connection.sendall(b"354 Go ahead\r\n")
                elif verb == b"RSET":
                    connection.sendall(b"250 2.0.0 OK\r\n")
                elif verb == b"QUIT":
                    connection.sendall(b"221 2.0.0 Bye\r\n")
                    return

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


def test_data_accepted_without_recipients_gets_no_content_and_drops_the_connection() -> None:
    server = ScriptedServer()
    try:
        with SMTPTransport(plain_server(server.port)) as transport:
            result = transport.send_message(envelope())
            assert result.error is not None
            assert result.error.code == 550 and result.error.step == "rcpt"
            assert not transport.is_open
    finally:
        server.close()
    assert server.body_lines == []  # not even an empty body: nothing can be delivered


# -- CHUNKING ---------------------------------------------------------------------------------


def test_bdat_is_asked_about_once_then_each_message_is_one_write_and_arrives_byte_for_byte() -> (
    None
):
    with SMTPSink(pipelining=True, chunking="yes") as sink:
        with SMTPTransport(plain_server(sink.port)) as transport:
            writes = spy_writes(transport)
            events: list[str] = []

            def before_data() -> None:
                events.append("before data")
                assert not writes[-1].endswith(b"LAST\r\n")  # the transaction is not complete

            assert transport.send_message(envelope(), before_data=before_data).ok
            envelope_lines = (
                f"MAIL FROM:<app@example.com> SIZE={len(CONTENT)}\r\nRCPT TO:<a@example.org>\r\n"
            ).encode()
            # The first message on the connection asks whether BDAT is known, outside a transaction.
            assert writes[0] == b"BDAT 0 LAST\r\n" + envelope_lines
            assert writes[1] == b"BDAT %d\r\n" % len(CONTENT) + CONTENT  # no dot-stuffing
            assert writes[2] == b"BDAT 0 LAST\r\n"
            writes.clear()
            assert transport.send_message(envelope(), before_data=before_data).ok
            # Then envelope and content in one write, and LAST once before_data has returned.
            assert writes == [
                envelope_lines + b"BDAT %d\r\n" % len(CONTENT) + CONTENT,
                b"BDAT 0 LAST\r\n",
            ]
            assert events == ["before data", "before data"]
        assert [r.data for r in sink.received] == [CONTENT, CONTENT]


def test_a_server_advertising_chunking_without_bdat_gets_data_after_one_check() -> None:
    with SMTPSink(pipelining=True, chunking="broken") as sink:
        with SMTPTransport(plain_server(sink.port)) as transport:
            for _ in range(3):
                assert transport.send_message(envelope()).ok
        # Later connections to the same server do not ask again.
        with SMTPTransport(plain_server(sink.port)) as transport:
            assert transport.send_message(envelope()).ok
        assert sink.bdat_commands == 1  # only the question, never content
        assert [r.data for r in sink.received] == [CONTENT] * 4


def test_a_server_hanging_up_on_bdat_gets_data_on_the_next_connection() -> None:
    with SMTPSink(pipelining=True, chunking="hang-up") as sink:
        with (
            pytest.raises(TransportError) as caught,
            SMTPTransport(plain_server(sink.port)) as transport,
        ):
            transport.send_message(envelope())
        assert caught.value.step == "data" and not caught.value.permanent  # retried later
        with SMTPTransport(plain_server(sink.port)) as transport:
            assert transport.send_message(envelope()).ok
        assert sink.bdat_commands == 1
        assert [r.data for r in sink.received] == [CONTENT]


def test_chunking_turned_off_uses_data() -> None:
    with SMTPSink(pipelining=True, chunking="yes") as sink:
        with SMTPTransport(plain_server(sink.port), chunking=False) as transport:
            assert transport.send_message(envelope()).ok
        assert sink.bdat_commands == 0 and sink.received[0].data == CONTENT


class QuickAckSpy:
    """A connection's socket that notes, at each TCP_QUICKACK setting, how many writes had gone out."""

    def __init__(self, sock: socket.socket, writes: list[bytes]) -> None:
        self._sock = sock
        self._writes = writes
        self.after_writes: list[int] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if (level, option, value) == (socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1):
            self.after_writes.append(len(self._writes))
        self._sock.setsockopt(level, option, value)

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


@pytest.mark.parametrize("chunking", ["yes", ""], ids=["bdat", "data"])
def test_replies_are_acknowledged_at_once_once_the_groups_last_write_is_out(chunking: str) -> None:
    """A server may answer a group in several writes and hold the later ones until the earlier
    are acknowledged (Nagle's algorithm); the client acknowledges at once rather than 40 ms later."""
    with SMTPSink(pipelining=True, chunking=chunking) as sink:
        with SMTPTransport(plain_server(sink.port)) as transport:
            assert transport.send_message(envelope()).ok  # BDAT is confirmed (or DATA used)
            writes = spy_writes(transport)
            assert transport.connection is not None
            spy = QuickAckSpy(transport.connection.sock, writes)
            transport.connection.sock = spy  # type: ignore[assignment]
            assert transport.send_message(envelope()).ok
        # BDAT: envelope + chunk, then LAST, then the replies. DATA: the commands, their replies;
        # the content, ".", its reply.
        assert spy.after_writes == ([2] if chunking else [1, 3])
        assert len(sink.received) == 2


def test_without_tcp_quickack_chunking_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the system cannot acknowledge at once (no TCP_QUICKACK), BDAT's split replies could
    each wait for a delayed acknowledgement: DATA is used."""
    monkeypatch.setattr("mailgate.transports.smtp.TCP_QUICKACK", None)
    with SMTPSink(pipelining=True, chunking="yes") as sink:
        with SMTPTransport(plain_server(sink.port)) as transport:
            assert transport.send_message(envelope()).ok
        assert sink.bdat_commands == 0 and sink.received[0].data == CONTENT


def test_a_failure_before_bdat_last_drops_the_connection_and_sends_nothing() -> None:
    with SMTPSink(pipelining=True, chunking="yes") as sink:
        with SMTPTransport(plain_server(sink.port)) as transport:
            assert transport.send_message(envelope()).ok  # BDAT is confirmed

            def refuse() -> None:
                raise RuntimeError("the previous outcome could not be recorded")

            with pytest.raises(RuntimeError):
                transport.send_message(envelope(), before_data=refuse)
            assert not transport.is_open
        assert len(sink.received) == 1
