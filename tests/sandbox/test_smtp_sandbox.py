"""The SMTP server behind the identity side's MailPolicy: real tokens from MSAL, switches from the control API."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import msal
import pytest

from mailgate.sandbox.server import Sandbox
from tests.sandbox.mail_fixtures import Sasl, outlook_token, xoauth2

pytestmark = pytest.mark.nodb

SHARED = "info@contoso.example"


def session(sandbox: Sandbox) -> smtplib.SMTP:
    client = smtplib.SMTP(sandbox.host, sandbox.ports["smtp"], timeout=10)
    client.starttls(context=sandbox.ca.client_context())  # type: ignore[union-attr]
    client.ehlo()
    return client


def app_only_token(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sandbox.ca_file))
    demo = sandbox.demo
    app = msal.ConfidentialClientApplication(
        demo["client_id"],
        client_credential=demo["client_secret"],
        authority=f"{sandbox.https_url}/{demo['tenant_id']}",
        verify=str(sandbox.ca_file),
        instance_discovery=False,
    )
    result = app.acquire_token_for_client(["https://outlook.office365.com/.default"])
    assert "access_token" in result, result
    token: str = result["access_token"]
    return token


def note(sender: str, to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, "Note"
    msg.set_content("Hello.\n")
    return msg


def test_an_app_only_token_sends_once_an_admin_consented(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = sandbox.demo["user"]
    # Without admin consent the token carries no SMTP.SendAsApp role (Microsoft's app-only access
    # steps for SMTP need the admin's grant).
    sandbox.control.call("set_admin_consent", client_id=sandbox.demo["client_id"], granted=False)
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        session(sandbox).auth("XOAUTH2", Sasl(xoauth2(user, app_only_token(sandbox, monkeypatch))))
    assert info.value.smtp_code == 535
    sandbox.control.call("set_admin_consent", client_id=sandbox.demo["client_id"])
    client = session(sandbox)
    token = app_only_token(sandbox, monkeypatch)
    assert client.auth("XOAUTH2", Sasl(xoauth2(user, token)))[0] == 235
    assert client.send_message(note(user, "someone@fabrikam.example")) == {}
    client.quit()
    assert sandbox.control.messages()[0]["authenticated_as"] == user


def test_a_shared_mailbox_needs_the_grant(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = sandbox.demo["user"]
    token = outlook_token(sandbox, monkeypatch, "SMTP.Send")
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        session(sandbox).auth("XOAUTH2", Sasl(xoauth2(SHARED, token)))
    assert info.value.smtp_code == 535
    client = session(sandbox)
    client.auth("XOAUTH2", Sasl(xoauth2(user, token)))
    with pytest.raises(smtplib.SMTPDataError) as denied:
        client.send_message(note(SHARED, user))
    assert denied.value.smtp_error.startswith(b"5.2.252 SendAsDenied;")
    client.quit()

    sandbox.control.call("grant_send_as", mailbox=SHARED, trustee=user)
    client = session(sandbox)
    assert client.auth("XOAUTH2", Sasl(xoauth2(SHARED, token)))[0] == 235
    assert client.send_message(note(SHARED, user)) == {}
    client.quit()


def test_limits_set_through_the_control_api_apply(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = sandbox.demo["user"]
    token = outlook_token(sandbox, monkeypatch, "SMTP.Send")
    sandbox.control.call("set_limits", user=user, connections=1, recipients_per_day=2)
    first = session(sandbox)
    first.auth("XOAUTH2", Sasl(xoauth2(user, token)))
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        session(sandbox).auth("XOAUTH2", Sasl(xoauth2(user, token)))
    assert info.value.smtp_code == 432
    assert (
        first.sendmail(user, ["a@fabrikam.example", "b@fabrikam.example"], b"Subject: x\r\n\r\n")
        == {}
    )
    with pytest.raises(smtplib.SMTPDataError) as quota:
        first.sendmail(user, ["c@fabrikam.example"], b"Subject: y\r\n\r\n")
    assert b"SubmissionQuotaExceededException" in quota.value.smtp_error
    sandbox.control.advance_clock(24 * 3600 + 1)
    assert first.sendmail(user, ["c@fabrikam.example"], b"Subject: z\r\n\r\n") == {}
    first.quit()
