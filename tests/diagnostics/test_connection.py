"""Test Connection against the sandbox (OAuth) and a loopback SMTP server (password): each step, the
exact reply of the failing one, its diagnosis, and what is recorded on the server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from mailgate.diagnostics.connection import run_connection_test
from mailgate.oauth.models import Grant
from mailgate.sandbox.ca import SandboxCA
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer, ServerStatus
from tests.oauth.conftest import Browser, connect
from tests.smtpsink import SMTPSink


@pytest.fixture
def connected(
    admin_client: Client, outlook_server: MailServer, browser: Browser, idp: Sandbox
) -> MailServer:
    assert connect(admin_client, browser, outlook_server, idp.demo["password"]).status_code == 302
    outlook_server.refresh_from_db()
    return outlook_server


def names(result: object) -> list[str]:
    return [s.name for s in result.steps]  # type: ignore[attr-defined]


def test_a_connected_outlook_server_passes_every_step_and_sends_nothing(
    connected: MailServer, idp: Sandbox
) -> None:
    before = len(idp.control.messages())
    result = run_connection_test(connected)
    assert result.ok, result.summary()
    assert result.headline == "Connection test succeeded."
    host, port = connected.smtp_host, connected.smtp_port
    assert names(result) == [
        "Refresh access token",
        f"SMTP connect {host}:{port}",
        "SMTP STARTTLS",
        "SMTP TLS",
        "SMTP authenticate (XOAUTH2)",
        f"SMTP MAIL FROM <{connected.username}>",
        f"SMTP RCPT TO <{connected.username}>",
        "SMTP DATA (aborted, nothing sent)",
    ]
    details = {s.name: s.detail for s in result.steps}
    assert details["SMTP authenticate (XOAUTH2)"].startswith("235 2.7.0")
    assert "certificate verified" in details["SMTP TLS"]
    assert details["SMTP DATA (aborted, nothing sent)"].startswith("354")
    assert len(idp.control.messages()) == before
    connected.refresh_from_db()
    assert connected.last_test_ok is True and connected.last_test_at is not None
    assert "235 2.7.0" in connected.last_test_summary
    assert connected.status == ServerStatus.TOKEN_VALID


def test_smtp_auth_disabled_names_the_step_the_reply_and_the_fix(
    connected: MailServer, idp: Sandbox
) -> None:
    idp.control.call("update_user", user=connected.username, smtp_auth_disabled=True)
    try:
        result = run_connection_test(connected)
    finally:
        idp.control.call("update_user", user=connected.username, smtp_auth_disabled=None)
    failed = result.failed
    assert failed is not None and failed.name == "SMTP authenticate (XOAUTH2)"
    assert "535 5.7.139" in failed.detail
    assert "Set-CASMailbox" in failed.diagnosis
    connected.refresh_from_db()
    assert connected.status == ServerStatus.FAILING
    assert connected.last_test_ok is False
    assert "5.7.139" in connected.last_test_summary and "Diagnosis:" in connected.last_test_summary


def test_an_unconnected_server_fails_at_the_token_step(outlook_server: MailServer) -> None:
    result = run_connection_test(outlook_server)
    assert names(result) == ["Refresh access token"]
    assert "Connect your Outlook account" in result.failed.diagnosis  # type: ignore[union-attr]


def test_a_revoked_grant_fails_at_the_token_step_and_asks_for_a_reconnect(
    admin_client: Client,
    revocable_server: MailServer,
    fresh_user: dict[str, str],
    browser: Browser,
    idp: Sandbox,
) -> None:
    connected = revocable_server
    assert connect(admin_client, browser, connected, fresh_user["password"]).status_code == 302
    idp.control.revoke_grants(connected.username)
    result = run_connection_test(connected)
    assert result.failed is not None and result.failed.name == "Refresh access token"
    assert "AADSTS50173" in result.failed.detail + result.failed.diagnosis
    connected.refresh_from_db()
    assert connected.status == ServerStatus.RECONNECT_REQUIRED


def test_an_untrusted_certificate_fails_at_starttls_and_points_at_ssl_cert_file(
    connected: MailServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    Grant.objects.filter(server=connected)  # the token is fine; only trust is missing
    monkeypatch.delenv("SSL_CERT_FILE")
    result = run_connection_test(connected)
    assert result.failed is not None
    assert result.failed.name == "Refresh access token" or result.failed.name == "SMTP STARTTLS"
    assert "certificate" in result.failed.detail.lower()
    assert "SSL_CERT_FILE" in result.failed.diagnosis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_closed_port_fails_at_connect(db: None) -> None:
    server = MailServer.objects.create(
        name="nothing there",
        auth_method="password",
        username="a@b.example",
        password="x",
        smtp_host="127.0.0.1",
        smtp_port=free_port(),
        smtp_security="none",
    )
    result = run_connection_test(server)
    assert result.failed is not None and result.failed.name.startswith("SMTP connect")
    assert "Nothing listens" in result.failed.diagnosis


@pytest.fixture
def tls_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SMTPSink]:
    ca = SandboxCA(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))
    with SMTPSink(
        users={"ann@example.com": "s3cret-pass"}, tls_context=ca.server_context()
    ) as sink:
        yield sink


def password_server(sink: SMTPSink, password: str) -> MailServer:
    return MailServer.objects.create(
        name="Office relay",
        auth_method="password",
        username="ann@example.com",
        password=password,
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_security="starttls",
    )


def test_a_password_server_passes_with_plain_over_starttls(db: None, tls_sink: SMTPSink) -> None:
    server = password_server(tls_sink, "s3cret-pass")
    result = run_connection_test(server)
    assert result.ok, result.summary()
    assert "SMTP authenticate (password)" in names(result)
    assert tls_sink.received == []
    server.refresh_from_db()
    assert server.status == ServerStatus.READY


def test_a_wrong_password_fails_at_authenticate_with_the_reply(
    db: None, tls_sink: SMTPSink
) -> None:
    result = run_connection_test(password_server(tls_sink, "wrong"))
    failed = result.failed
    assert failed is not None and failed.name == "SMTP authenticate (password)"
    assert failed.detail.startswith("535")
    assert "Username and Password" in failed.diagnosis


def test_the_button_shows_the_result_once(admin_client: Client, connected: MailServer) -> None:
    response = admin_client.post(
        f"/settings/technical/mail-servers/{connected.pk}/test", follow=True
    )
    page = response.content.decode()
    assert page.count("Connection test succeeded") == 1
    assert "235 2.7.0" in page


def test_viewers_cannot_run_the_test(viewer_client: Client, connected: MailServer) -> None:
    assert (
        viewer_client.post(f"/settings/technical/mail-servers/{connected.pk}/test").status_code
        == 403
    )
    connected.refresh_from_db()
    assert connected.last_test_at is None


def test_the_command_prints_the_steps(
    connected: MailServer, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("servers", "test", connected.name)
    out = capsys.readouterr().out
    assert "Connection test succeeded." in out and "[ok] SMTP authenticate (XOAUTH2): 235" in out


def test_the_command_exits_non_zero_on_failure(outlook_server: MailServer) -> None:
    with pytest.raises(CommandError) as caught:
        call_command("servers", "test", outlook_server.name)
    assert caught.value.returncode == 1


def test_the_command_names_an_unknown_server(db: None) -> None:
    with pytest.raises(CommandError) as caught:
        call_command("servers", "test", "nope")
    assert caught.value.returncode == 2 and "NAME" in str(caught.value)
