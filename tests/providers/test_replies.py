"""Server replies get a plain diagnosis with the step that fixes them."""

from __future__ import annotations

import pytest

from mailgate.providers.replies import diagnose_reply

pytestmark = pytest.mark.nodb


@pytest.mark.parametrize(
    ("provider", "reply", "needle"),
    [
        (
            "microsoft",
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
            "Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
            "Set-CASMailbox",
        ),
        (
            "microsoft",
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
            "Mailbox.",
            "Authenticated SMTP",
        ),
        ("microsoft", "535 5.7.3 Authentication unsuccessful [SN2PR00CA0018]", "SMTP.Send"),
        ("microsoft", "554 5.2.252 SendAsDenied; a not allowed to send as b", "Send As"),
        ("microsoft", "432 4.3.2 Concurrent connections limit exceeded.", "3 concurrent"),
        ("microsoft", "NO AUTHENTICATE failed.", "IMAP"),
        ("google", "535-5.7.8 Username and Password not accepted. BadCredentials", "IMAP"),
        ("google", "550 5.4.5 Daily user sending limit exceeded.", "24 hours"),
        (None, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", "SSL_CERT_FILE"),
        (None, "[Errno 111] Connection refused", "port"),
    ],
)
def test_it_diagnoses_known_replies(provider: str | None, reply: str, needle: str) -> None:
    diagnosis = diagnose_reply(provider, reply)
    assert diagnosis is not None
    assert needle in diagnosis.as_text()


def test_an_unknown_reply_has_no_invented_diagnosis() -> None:
    assert diagnose_reply("microsoft", "250 2.0.0 OK") is None
