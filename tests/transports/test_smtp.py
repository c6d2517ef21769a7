"""The SMTP transport against a real aiosmtpd server on loopback: TLS verification, AUTH, step methods."""

from __future__ import annotations

import base64

import pytest

from mailgate.sandbox.ca import SandboxCA
from mailgate.transports import REGISTRY
from mailgate.transports.base import Envelope, TransportError, require_encryption
from mailgate.transports.credentials import (
    BearerToken,
    Endpoint,
    Password,
    xoauth2_string,
)
from mailgate.transports.smtp import SMTPTransport, parse_queue_id
from tests.smtpsink import SMTPSink

# The sink accepts AUTH without TLS on loopback, which aiosmtpd warns about.
pytestmark = [
    pytest.mark.nodb,
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]


def smtp_to(
    port: int,
    *,
    security: str = "starttls",
    password: str | None = None,
    username: str = "app@example.com",
) -> SMTPTransport:
    credential = Password(username, password) if password is not None and username else None
    return SMTPTransport(Endpoint("127.0.0.1", port, security), credential)


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
    with smtp_to(tls_sink.port, password="s3cret") as transport:
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
        smtp_to(tls_sink.port, password="s3cret").open()
    assert caught.value.step == "tls" and "not trusted" in str(caught.value)


def test_a_wrong_password_is_a_permanent_auth_error_with_the_reply(tls_sink, ca, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))
    with pytest.raises(TransportError) as caught:
        smtp_to(tls_sink.port, password="wrong").open()
    assert caught.value.step == "auth" and caught.value.permanent and caught.value.code == 535


def test_the_steps_run_one_by_one_for_a_connection_test(tls_sink, ca, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))
    transport = smtp_to(tls_sink.port, password="s3cret")
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
        smtp_to(port, security="none", password="s3cret").open()
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
        with smtp_to(sink.port, security="none") as transport:
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


def test_a_bearer_token_or_password_is_never_sent_in_clear_to_a_remote_host():
    remote = Endpoint("mail.example.com", 25, "none")
    for what in ("access token", "password"):
        with pytest.raises(TransportError) as caught:
            require_encryption(remote, is_encrypted=False, what=what)
        assert caught.value.permanent and caught.value.step == "auth"
        assert f"refusing to send the {what}" in str(caught.value)
        assert "Connection Security" in str(caught.value)
    # Encrypted, or to this machine itself, it goes.
    require_encryption(remote, is_encrypted=True, what="access token")
    require_encryption(Endpoint("127.0.0.1", 25, "none"), is_encrypted=False, what="access token")


@pytest.mark.parametrize(
    ("offered", "used"),
    [(("XOAUTH2", "OAUTHBEARER"), "XOAUTH2"), (("OAUTHBEARER",), "OAUTHBEARER")],
)
def test_a_bearer_credential_uses_xoauth2_or_else_oauthbearer_and_asks_for_one_token(offered, used):
    calls: list[str] = []

    def get_token() -> str:
        calls.append("token")
        return "opaque-token-value"

    with SMTPSink(
        users={"app@example.com": "opaque-token-value"}, bearer_mechanisms=offered
    ) as sink:
        credential = BearerToken("app@example.com", get_token)
        with SMTPTransport(Endpoint("127.0.0.1", sink.port, "none"), credential) as smtp:
            assert smtp.token_requests == 1
            (result,) = smtp.send_messages(
                [Envelope("app@example.com", ["a@example.org"], b"Subject: x\r\n\r\nhi\r\n")]
            )
    assert result.ok and calls == ["token"]
    assert sink.bearer_logins == [(used, "app@example.com")]
    assert sink.received[0].login == "app@example.com"


def test_a_token_the_server_refuses_is_a_permanent_auth_error():
    with SMTPSink(users={"app@example.com": "the-right-token"}) as sink:
        credential = BearerToken("app@example.com", lambda: "a-revoked-token")
        with pytest.raises(TransportError) as caught:
            SMTPTransport(Endpoint("127.0.0.1", sink.port, "none"), credential).open()
    assert caught.value.step == "auth" and caught.value.code == 535


@pytest.mark.parametrize("offered", [("XOAUTH2",), ("OAUTHBEARER",)])
def test_a_refused_token_is_renewed_once_and_the_new_one_logs_in(offered):
    asked: list[str] = []

    def renew(refused: str) -> str:
        assert refused == "a-revoked-token"
        asked.append("renew")
        return "the-new-token"

    with SMTPSink(users={"app@example.com": "the-new-token"}, bearer_mechanisms=offered) as sink:
        credential = BearerToken("app@example.com", lambda: "a-revoked-token", renew=renew)
        with SMTPTransport(Endpoint("127.0.0.1", sink.port, "none"), credential) as smtp:
            (result,) = smtp.send_messages(
                [Envelope("app@example.com", ["a@example.org"], b"Subject: x\r\n\r\nhi\r\n")]
            )
            assert smtp.token_requests == 2
    assert result.ok and asked == ["renew"]
    assert sink.auth_attempts == 2 and sink.connections == 1


def test_a_renewed_token_refused_too_is_the_permanent_auth_error_after_one_renewal():
    asked: list[str] = []

    def renew(refused: str) -> str:
        assert refused == "a-revoked-token"
        asked.append("renew")
        return "still-wrong"

    with SMTPSink(users={"app@example.com": "the-right-token"}) as sink:
        credential = BearerToken("app@example.com", lambda: "a-revoked-token", renew=renew)
        with pytest.raises(TransportError) as caught:
            SMTPTransport(Endpoint("127.0.0.1", sink.port, "none"), credential).open()
    assert caught.value.step == "auth" and caught.value.code == 535
    assert asked == ["renew"]
