"""Tokens from the sandbox's token endpoint authenticate stdlib smtplib, imaplib and poplib (XOAUTH2)."""

from __future__ import annotations

import base64
import imaplib
import poplib
import smtplib
from collections.abc import Callable
from email.message import EmailMessage

import httpx
import pytest

from mailgate.sandbox.server import Sandbox
from tests.sandbox.test_microsoft_errors import get_code, redeem
from tests.sandbox_fixtures import ca_context

pytestmark = pytest.mark.nodb


@pytest.fixture
def full_sandbox(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    # Dovecot is required here: a missing Dovecot must fail this test, not skip it.
    return sandbox_factory(dovecot=True)


def _xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def _outlook_token(sandbox: Sandbox, scope: str) -> str:
    with httpx.Client(verify=ca_context(sandbox.ca_file), base_url=sandbox.https_url) as browser:
        body = redeem(sandbox, get_code(sandbox, browser, scope=scope)).json()
    return str(body["access_token"])


def test_an_outlook_token_sends_over_smtp_and_the_mail_is_read_over_imap(
    full_sandbox: Sandbox,
) -> None:
    sandbox = full_sandbox
    token = _outlook_token(
        sandbox,
        "offline_access https://outlook.office.com/SMTP.Send https://outlook.office.com/IMAP.AccessAsUser.All",
    )
    user = sandbox.demo["user"]
    context = ca_context(sandbox.ca_file)
    message = EmailMessage()
    message["From"] = user
    message["To"] = "megan@contoso.example, " + user
    message["Subject"] = "end to end"
    message.set_content("hello")
    with smtplib.SMTP("127.0.0.1", sandbox.ports["smtp"], timeout=10) as smtp:
        smtp.starttls(context=context)
        smtp.ehlo()
        code, reply = smtp.auth(
            "XOAUTH2",
            lambda challenge=None: _xoauth2(user, token).decode(),
            initial_response_ok=True,
        )
        assert (code, reply) == (235, b"2.7.0 Authentication successful")
        smtp.send_message(message)
    assert [m["subject"] for m in sandbox.control.messages()] == ["end to end"]
    with imaplib.IMAP4_SSL(
        "127.0.0.1", sandbox.ports["imap"], ssl_context=context, timeout=10
    ) as imap:
        typ, _ = imap.authenticate("XOAUTH2", lambda _: _xoauth2(user, token))
        assert typ == "OK"
        imap.select("INBOX")
        typ, found = imap.search(None, '(SUBJECT "end to end")')
        assert typ == "OK" and found[0].split()


def test_an_smtp_only_token_is_refused_by_imap_and_pop3(full_sandbox: Sandbox) -> None:
    sandbox = full_sandbox
    token = _outlook_token(sandbox, "https://outlook.office.com/SMTP.Send")
    user = sandbox.demo["user"]
    context = ca_context(sandbox.ca_file)
    with (
        imaplib.IMAP4_SSL(
            "127.0.0.1", sandbox.ports["imap"], ssl_context=context, timeout=10
        ) as imap,
        pytest.raises(imaplib.IMAP4.error),
    ):
        imap.authenticate("XOAUTH2", lambda challenge: b"" if challenge else _xoauth2(user, token))
    pop = poplib.POP3_SSL("127.0.0.1", sandbox.ports["pop3"], context=context, timeout=10)
    try:
        pop._shortcmd("AUTH XOAUTH2")  # type: ignore[attr-defined]
        with pytest.raises(poplib.error_proto):
            reply = pop._shortcmd(base64.b64encode(_xoauth2(user, token)).decode())  # type: ignore[attr-defined]
            # Dovecot answers a refused token with a SASL error challenge; the empty reply ends it.
            assert not reply.startswith(b"+OK")
            pop._shortcmd("")  # type: ignore[attr-defined]
    finally:
        pop.close()
    assert sandbox.control.counters().get("introspect_imap", 0) >= 1


def test_a_pop_token_opens_the_pop3_mailbox(full_sandbox: Sandbox) -> None:
    sandbox = full_sandbox
    token = _outlook_token(sandbox, "https://outlook.office.com/POP.AccessAsUser.All")
    sandbox.control.call("deliver", to=sandbox.demo["user"], subject="delivered by ctl", body="hi")
    context = ca_context(sandbox.ca_file)
    pop = poplib.POP3_SSL("127.0.0.1", sandbox.ports["pop3"], context=context, timeout=10)
    try:
        pop._shortcmd("AUTH XOAUTH2")  # type: ignore[attr-defined]
        reply = pop._shortcmd(base64.b64encode(_xoauth2(sandbox.demo["user"], token)).decode())  # type: ignore[attr-defined]
        assert reply.startswith(b"+OK")
        count, _ = pop.stat()
        assert count == 1
    finally:
        pop.quit()
