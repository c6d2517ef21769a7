"""End to end through the whole sandbox: MSAL gets real tokens from the identity side, smtplib submits
to the SMTP server, Dovecot (asking the identity side's introspection endpoint) serves the mail to
imaplib and poplib; the control API's switches and clock change what the mail servers answer."""

from __future__ import annotations

import base64
import imaplib
import poplib
import smtplib
from collections.abc import Callable
from email.message import EmailMessage

import pytest

from mailgate.sandbox import dovecot as dovecot_module
from mailgate.sandbox.dovecot import INSTALL_HINT
from mailgate.sandbox.server import Sandbox
from tests.sandbox.mail_fixtures import (
    Sasl,
    google_token,
    oauthbearer,
    outlook_token,
    wait_for,
    xoauth2,
)

pytestmark = pytest.mark.nodb


@pytest.fixture
def full_sandbox(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    if not dovecot_module.dovecot_available():
        pytest.fail(INSTALL_HINT)
    return sandbox_factory(dovecot=True)


def smtp_session(sandbox: Sandbox) -> smtplib.SMTP:
    client = smtplib.SMTP(sandbox.host, sandbox.ports["smtp"], timeout=10)
    client.starttls(context=sandbox.ca.client_context())  # type: ignore[union-attr]
    client.ehlo()
    return client


def imap_session(sandbox: Sandbox) -> imaplib.IMAP4_SSL:
    context = sandbox.ca.client_context()  # type: ignore[union-attr]
    return imaplib.IMAP4_SSL(sandbox.host, sandbox.ports["imap"], ssl_context=context, timeout=10)


def test_a_message_sent_with_a_real_token_is_caught_and_read_back_over_imap_and_pop(
    full_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = full_sandbox.demo["user"]
    token = outlook_token(
        full_sandbox,
        monkeypatch,
        "SMTP.Send",
        "IMAP.AccessAsUser.All",
        "POP.AccessAsUser.All",
    )
    client = smtp_session(full_sandbox)
    assert client.auth("XOAUTH2", Sasl(xoauth2(user, token))) == (
        235,
        b"2.7.0 Authentication successful",
    )
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = user, user, "Round trip"
    msg["Message-ID"] = "<round-trip@contoso.example>"
    msg.set_content("Through the whole sandbox.\n")
    client.send_message(msg)
    client.quit()

    [caught] = full_sandbox.control.messages()
    assert caught["subject"] == "Round trip"
    assert caught["authenticated_as"] == user

    imap = imap_session(full_sandbox)
    assert imap.authenticate("XOAUTH2", Sasl(xoauth2(user, token), as_bytes=True))[0] == "OK"
    imap.select("INBOX")
    _, found = imap.search(None, "HEADER", "Message-ID", "<round-trip@contoso.example>")
    assert len(found[0].split()) == 1
    imap.logout()

    pop = poplib.POP3_SSL(
        full_sandbox.host,
        full_sandbox.ports["pop3"],
        context=full_sandbox.ca.client_context(),  # type: ignore[union-attr]
        timeout=10,
    )
    pop._shortcmd("AUTH OAUTHBEARER")
    assert pop._shortcmd(base64.b64encode(oauthbearer(user, token).encode()).decode()).startswith(
        b"+OK"
    )
    assert pop.stat()[0] == 1
    pop.quit()


def test_the_control_api_switches_reach_the_mail_servers(
    full_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = full_sandbox.demo["user"]
    token = outlook_token(full_sandbox, monkeypatch, "SMTP.Send", "IMAP.AccessAsUser.All")

    full_sandbox.control.call("update_user", user=user, smtp_auth_disabled=True)
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        smtp_session(full_sandbox).auth("XOAUTH2", Sasl(xoauth2(user, token)))
    assert info.value.smtp_code == 535
    assert b"SmtpClientAuthentication is disabled for the Mailbox" in info.value.smtp_error
    full_sandbox.control.call("update_user", user=user, smtp_auth_disabled=None)

    full_sandbox.control.call("deliver", to=user, raw="Subject: Injected\r\n\r\nHello.\r\n")
    imap = imap_session(full_sandbox)
    imap.authenticate("XOAUTH2", Sasl(xoauth2(user, token), as_bytes=True))
    assert imap.select("INBOX") == ("OK", [b"1"])
    imap.logout()

    # Past the token's lifetime on the sandbox clock, both servers refuse it.
    full_sandbox.control.advance_clock(2 * 3600)
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        smtp_session(full_sandbox).auth("XOAUTH2", Sasl(xoauth2(user, token)))
    assert info.value.smtp_code == 535
    assert info.value.smtp_error.startswith(b"5.7.3 Authentication unsuccessful")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_session(full_sandbox).authenticate(
            "XOAUTH2", Sasl(xoauth2(user, token), as_bytes=True)
        )


def test_a_google_token_submits_and_reads_mail_like_gmail(full_sandbox: Sandbox) -> None:
    user = full_sandbox.demo["google_user"]
    token = google_token(full_sandbox)
    client = smtp_session(full_sandbox)
    assert client.auth("XOAUTH2", Sasl(xoauth2(user, token))) == (235, b"2.7.0 Accepted")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = user, user, "From Gmail"
    msg.set_content("Hello.\n")
    assert client.send_message(msg) == {}
    client.quit()
    imap = imap_session(full_sandbox)
    assert imap.authenticate("XOAUTH2", Sasl(xoauth2(user, token), as_bytes=True))[0] == "OK"
    assert imap.select("INBOX") == ("OK", [b"1"])
    imap.logout()


def test_on_a_fast_clock_held_back_mail_arrives_a_sandbox_minute_later(
    full_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = full_sandbox.demo["user"]
    token = outlook_token(full_sandbox, monkeypatch, "SMTP.Send", "IMAP.AccessAsUser.All")
    full_sandbox.control.call("set_limits", user=user, per_minute=2)
    client = smtp_session(full_sandbox)
    client.auth("XOAUTH2", Sasl(xoauth2(user, token)))
    for i in range(3):
        client.sendmail(user, [user], f"Subject: n{i}\r\n\r\nx\r\n".encode())
    client.quit()
    assert len(full_sandbox.smtp.pending_deliveries()) == 1
    # 600 times as fast: the held message's sandbox minute passes in about 0.1 s.
    full_sandbox.control.call("set_clock", scale=600)
    wait_for(lambda: not full_sandbox.smtp.pending_deliveries(), timeout=10)
    imap = imap_session(full_sandbox)
    imap.authenticate("XOAUTH2", Sasl(xoauth2(user, token), as_bytes=True))
    assert imap.select("INBOX") == ("OK", [b"3"])
    imap.logout()
