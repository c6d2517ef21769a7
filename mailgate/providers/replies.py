"""Server replies (SMTP, IMAP, POP, TLS, network) in plain words with the step that fixes them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailgate.providers.base import Diagnosis


@dataclass(frozen=True)
class ReplyRule:
    """A reply text pattern (regex, case-insensitive) and what it means."""

    pattern: str
    diagnosis: Diagnosis
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern, re.I | re.S))

    def matches(self, text: str) -> bool:
        return bool(self._regex.search(text))


TRUST_FIX = (
    "Use the server's real host name (the certificate must name it). If the server uses a private "
    "or self-signed CA, put that CA's PEM file in SSL_CERT_FILE for mailgate; certificate "
    "verification cannot be switched off."
)

GENERIC: tuple[ReplyRule, ...] = (
    ReplyRule(
        r"CERTIFICATE_VERIFY_FAILED|certificate verify failed",
        Diagnosis(
            "TLS certificate not trusted", "The server's certificate did not verify.", TRUST_FIX
        ),
    ),
    ReplyRule(
        r"hostname mismatch|doesn't match|IP address mismatch",
        Diagnosis(
            "TLS certificate is for another host",
            "The certificate does not name the host mailgate connected to.",
            TRUST_FIX,
        ),
    ),
    ReplyRule(
        r"WRONG_VERSION_NUMBER|wrong version number|unknown protocol",
        Diagnosis(
            "Wrong connection security for this port",
            "The server did not speak TLS the way Connection Security says.",
            "Use SSL/TLS for ports 465/993/995 and TLS (STARTTLS) for 587/143/110.",
        ),
    ),
    ReplyRule(
        r"STARTTLS extension not supported|does not offer STARTTLS|STARTTLS not supported",
        Diagnosis(
            "The server offers no STARTTLS",
            "Connection Security is TLS (STARTTLS), but the server does not offer it.",
            "Check the port (587 for submission) or choose SSL/TLS for an implicit-TLS port.",
        ),
    ),
    ReplyRule(
        r"Connection refused|Errno 111",
        Diagnosis(
            "Connection refused",
            "Nothing listens on that host and port.",
            "Check the server name and port, and that a firewall allows the connection.",
        ),
    ),
    ReplyRule(
        r"timed out|timeout",
        Diagnosis(
            "No answer in time",
            "The server did not answer before the timeout.",
            "Check the server name and port, and that outbound connections to it are allowed.",
        ),
    ),
    ReplyRule(
        r"Name or service not known|nodename nor servname|getaddrinfo|No address associated",
        Diagnosis(
            "Unknown host name",
            "The server name could not be resolved.",
            "Check the spelling of the server name.",
        ),
    ),
    ReplyRule(
        r"AUTH.*not supported|No suitable authentication method|does not support AUTH",
        Diagnosis(
            "Authentication method not offered",
            "The server does not offer the authentication method this server needs.",
            "Check the port and Connection Security: many servers offer AUTH only after TLS.",
        ),
    ),
    ReplyRule(
        r"^5(35|34)|AUTHENTICATIONFAILED|Authentication failed|Invalid credentials",
        Diagnosis(
            "Authentication refused",
            "The server did not accept the credentials.",
            "Check Username and Password (or reconnect the OAuth account).",
        ),
    ),
)


def diagnose_reply(provider_key: str | None, text: str) -> Diagnosis | None:
    """The first matching diagnosis: the provider's catalogue first, then the generic one."""
    from mailgate import providers

    rules: tuple[ReplyRule, ...] = ()
    if provider_key and provider_key in providers.REGISTRY:
        rules = providers.REGISTRY[provider_key].replies
    for rule in (*rules, *GENERIC):
        if rule.matches(text):
            return rule.diagnosis
    return None


def transient_diagnosis(message: str) -> str:
    """The diagnosis of a failure to reach an identity provider (TLS trust, DNS, refused, timeout)."""
    found = diagnose_reply(None, message)
    if found is not None:
        return found.as_text()
    return "A transient failure; the refresh is retried with back-off."
