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

import httpx
import msal
import pytest

from mailgate.sandbox import dovecot as dovecot_module
from mailgate.sandbox.dovecot import INSTALL_HINT
from mailgate.sandbox.server import Sandbox
from tests.sandbox.mail_fixtures import Sasl, oauthbearer, xoauth2
from tests.sandbox_fixtures import complete_sign_in, redirect_params

pytestmark = pytest.mark.nodb

REDIRECT = "http://127.0.0.1:8000/oauth/microsoft/callback"
RESOURCE = "https://outlook.office.com/"


def outlook_token(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, *scopes: str) -> str:
    """An access token for the demo user, through MSAL's auth-code flow and the sign-in pages."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sandbox.ca_file))
    demo = sandbox.demo
    app = msal.ConfidentialClientApplication(
        demo["client_id"],
        client_credential=demo["client_secret"],
        authority=f"{sandbox.https_url}/{demo['tenant_id']}",
        verify=str(sandbox.ca_file),
        instance_discovery=False,
    )
    flow = app.initiate_auth_code_flow(
        [RESOURCE + s for s in scopes], redirect_uri=REDIRECT, login_hint=demo["user"]
    )
    with httpx.Client(verify=str(sandbox.ca_file)) as browser:
        final = complete_sign_in(browser, flow["auth_uri"], demo["user"], demo["password"])
    result = app.acquire_token_by_auth_code_flow(flow, redirect_params(final))
    assert "access_token" in result, result
    token: str = result["access_token"]
    return token


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


def google_token(sandbox: Sandbox) -> str:
    """A Google access token for the demo Gmail user, through the sandbox's Google consent flow."""
    demo = sandbox.demo
    redirect = "http://127.0.0.1:8000/oauth/google/callback"
    query = httpx.QueryParams(
        client_id=demo["google_client_id"],
        redirect_uri=redirect,
        response_type="code",
        scope="https://mail.google.com/",
        access_type="offline",
        state="s",
    )
    with httpx.Client(verify=str(sandbox.ca_file)) as browser:
        final = complete_sign_in(
            browser,
            f"{sandbox.google_auth_url}?{query}",
            demo["google_user"],
            demo["google_password"],
        )
        code = redirect_params(final)["code"]
        response = browser.post(
            sandbox.google_token_url,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect,
                "client_id": demo["google_client_id"],
                "client_secret": demo["google_client_secret"],
            },
        )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


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
