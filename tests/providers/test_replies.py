"""Server replies get a plain diagnosis with the step that fixes them."""

from __future__ import annotations

import pytest

from mailgate.providers.replies import GENERIC, Effect, diagnose_reply, match_reply

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


def test_an_exchange_reply_is_recognised_on_a_password_server_too() -> None:
    # A password server at Exchange Online has no provider; Exchange's own texts still name it.
    reply = "535 5.7.139 Authentication unsuccessful, basic authentication is disabled."
    rule = match_reply(None, reply)
    assert rule is not None and rule.effect == Effect.HOLD
    assert "Outlook OAuth Authentication" in rule.diagnosis.fix


def test_words_other_servers_use_count_only_on_the_providers_own_servers() -> None:
    reply = "NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)"
    google = diagnose_reply("google", reply)
    other = diagnose_reply(None, reply)
    assert google is not None and "Gmail" in google.title
    assert other is not None and "Gmail" not in other.as_text()
    assert diagnose_reply("microsoft", "NO AUTHENTICATE failed.") is not None
    assert diagnose_reply("google", "NO AUTHENTICATE failed.") is None


def test_every_rule_says_what_it_means_and_throttles_name_their_pause() -> None:
    from mailgate import providers

    rules = [*GENERIC, *(r for p in providers.REGISTRY.values() for r in p.replies)]
    for rule in rules:
        assert rule.diagnosis.title and rule.diagnosis.explanation and rule.diagnosis.fix
        assert (rule.pause > 0) == (rule.effect == Effect.THROTTLE), rule.pattern
    assert all(rule.anywhere for rule in GENERIC)
