"""The SMTP transport against a real aiosmtpd server on loopback: TLS verification, AUTH, step methods."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest

from mailgate.crypto import Sealed
from mailgate.sandbox.ca import SandboxCA
from mailgate.transports import REGISTRY
from mailgate.transports.base import Envelope, TransportError
from mailgate.transports.smtp import SMTPTransport, parse_queue_id, xoauth2_string
from tests.smtpsink import SMTPSink

pytestmark = pytest.mark.nodb


def server(port: int, **extra):
    values = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_security": "starttls",
        "auth_method": "password",
        "username": "app@example.com",
        "password": None,
        "certificate": "",
        "private_key": None,
        "is_oauth": False,
    }
    values.update(extra)
    return SimpleNamespace(**values)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return SandboxCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def tls_sink(ca):
    with SMTPSink(users={"app@example.com": "s3cret"}, tls_context=ca.server_context()) as sink:
        yield sink


def test_it_sends_over_starttls_with_a_trusted_certificate_and_plain_auth(
    tls_sink, ca, monkeypatch
):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))
    with SMTPTransport(server(tls_sink.port, password=Sealed.seal("s3cret"))) as transport:
        assert transport.is_encrypted
        (result,) = transport.send_messages(
            [Envelope("app@example.com", ["a@example.org"], b"Subject: x\r\n\r\nhi\r\n")]
        )
    assert result.ok and result.queue_id == "Q000001"
    assert tls_sink.received[0].login == "app@example.com"


def test_an_untrusted_certificate_is_refused(tls_sink, monkeypatch, tmp_path):
    other = SandboxCA(tmp_path)  # a CA that did not sign the server's certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(other.ca_file))
    with pytest.raises(TransportError) as caught:
        SMTPTransport(server(tls_sink.port, password=Sealed.seal("s3cret"))).open()
    assert caught.value.step == "tls" and "not trusted" in str(caught.value)


def test_a_wrong_password_is_a_permanent_auth_error_with_the_reply(tls_sink, ca, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))
    with pytest.raises(TransportError) as caught:
        SMTPTransport(server(tls_sink.port, password=Sealed.seal("wrong"))).open()
    assert caught.value.step == "auth" and caught.value.permanent and caught.value.code == 535


def test_the_steps_run_one_by_one_for_a_connection_test(tls_sink, ca, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))
    transport = SMTPTransport(server(tls_sink.port, password=Sealed.seal("s3cret")))
    assert transport.connect().code == 220
    assert "PLAIN" not in transport.auth_mechanisms()  # no AUTH before STARTTLS
    transport.starttls()
    assert transport.authenticate().code == 235
    assert transport.mail("app@example.com").code == 250
    assert transport.rcpt("a@example.org").code == 250
    assert transport.abort().code == 250
    transport.close()
    assert tls_sink.received == []


def test_a_closed_port_is_a_transient_connect_error():
    with SMTPSink() as sink:
        port = sink.port
    with pytest.raises(TransportError) as caught:
        SMTPTransport(server(port, smtp_security="none")).open()
    assert caught.value.step == "connect" and not caught.value.permanent


def test_xoauth2_string_and_queue_ids_and_registry():
    encoded = base64.b64encode(
        xoauth2_string(
            "test@contoso.onmicrosoft.com", "EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA"
        ).encode()
    )
    # The example of https://learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
    assert encoded.decode() == (
        "dXNlcj10ZXN0QGNvbnRvc28ub25taWNyb3NvZnQuY29tAWF1dGg9QmVhcmVy"
        "IEV3QkFBbDNCQUFVRkZwVUFvN0ozVmUwYmpMQldaV0NjbFJDM0VvQUEBAQ=="
    )
    assert parse_queue_id("Ok: queued as 4ABC123") == "4ABC123"
    assert parse_queue_id("OK <abc@x> [Hostname=h]") == "abc@x"
    assert parse_queue_id("OK") == ""
    assert REGISTRY["smtp"] is SMTPTransport


def test_before_data_runs_after_the_recipients_and_a_failure_there_sends_nothing() -> None:
    events: list[str] = []
    with SMTPSink() as sink:
        sink.rcpt_reply = lambda address: events.append(f"rcpt {address}") or None
        sink.data_reply = lambda envelope: events.append("data") or None
        plain = server(sink.port, smtp_security="none", username="")
        with SMTPTransport(plain) as transport:
            envelope = Envelope("app@example.com", ["a@example.org"], b"Subject: x\r\n\r\nhi\r\n")
            result = transport.send_message(
                envelope, before_data=lambda: events.append("before data")
            )
            assert result.ok
            assert events == ["rcpt a@example.org", "before data", "data"]

            def refuse() -> None:
                raise RuntimeError("the previous outcome could not be recorded")

            with pytest.raises(RuntimeError, match="could not be recorded"):
                transport.send_message(envelope, before_data=refuse)
            assert len(sink.received) == 1
            # The transaction was reset: the same connection sends the next message.
            assert transport.send_message(envelope).ok
        assert len(sink.received) == 2
