"""The catalogue of server replies (SMTP, IMAP, POP, TLS, network): what each means in plain words,
the step that fixes it, and what it does to the mail waiting for that server.

Each provider package lists the replies of its own mail servers (`Provider.replies`); the generic
rules below cover any server. The outbox (delivery decisions and diagnoses), Test Connection and
the incoming side read the same entries through `match_reply()` / `diagnose_reply()`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from enum import StrEnum

from mailgate.providers.base import Diagnosis


class Effect(StrEnum):
    """What a reply means for the mail waiting for the server."""

    HOLD = "hold"  # an account or setup problem: hold all the server's mail until it is fixed
    THROTTLE = "throttle"  # the server asks to slow down: pause it; messages keep their retries
    FAIL = "fail"  # this message can never be delivered as it is
    DEFER = "defer"  # a passing problem: retry this message later with back-off


@dataclass(frozen=True)
class ReplyRule:
    """A reply text pattern (regex, case-insensitive) and what it means.

    `effect` None: the reply's own class decides (5xx permanent, 4xx transient). `pause`: the
    seconds a THROTTLE pauses the server. `anywhere`: a provider's rule whose text only that
    provider's servers give, so it is recognised on any server (an Exchange reply seen by a
    password server); False for texts other servers use too, checked on the provider's servers only.
    """

    pattern: str
    diagnosis: Diagnosis
    effect: Effect | None = None
    pause: float = 0.0
    anywhere: bool = True
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
AUTH_REFUSED = Diagnosis(
    "Authentication refused",
    "The server did not accept the credentials.",
    "Check Username and Password, or press Connect again for an OAuth account.",
)
SLOW_DOWN_FIX = "Wait a minute before trying again; mailgate pauses sending meanwhile."

# Matched against "<code> <enhanced code> <text>" (or the error when there was no reply); the
# first match wins, so the rules with an effect come before the ones that only explain.
# Reference: https://www.rfc-editor.org/rfc/rfc3463 (enhanced status codes)
GENERIC: tuple[ReplyRule, ...] = (
    ReplyRule(
        r"\b4\.3\.2\b",
        Diagnosis(
            "The server accepts no more mail for now",
            "The server is not accepting messages at the moment (4.3.2).",
            SLOW_DOWN_FIX,
        ),
        Effect.THROTTLE,
        60,
    ),
    ReplyRule(
        r"\b4\.7\.0\b.*(rate|try again later|temporar)|\b421\b.*\b4\.7\.0\b",
        Diagnosis(
            "The server asks to slow down",
            "The server refused for now and asks for fewer messages or connections (4.7.0).",
            SLOW_DOWN_FIX,
        ),
        Effect.THROTTLE,
        60,
    ),
    ReplyRule(r"^535\b|\b5\.7\.8\b", AUTH_REFUSED, Effect.HOLD),
    ReplyRule(
        r"^530\b|\b5\.7\.0\b.*(authentication required|must issue a starttls)",
        Diagnosis(
            "Authentication or TLS required",
            "The server requires authentication or TLS before it accepts mail.",
            "Check Connection Security (TLS (STARTTLS) for port 587, SSL/TLS for 465) and the "
            "credentials.",
        ),
        Effect.HOLD,
    ),
    ReplyRule(
        r"hostname mismatch|doesn't match|IP address mismatch|certificate is not valid for",
        Diagnosis(
            "TLS certificate is for another host",
            "The certificate does not name the host mailgate connected to.",
            TRUST_FIX,
        ),
    ),
    ReplyRule(
        r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|certificate of \S+ is not trusted",
        Diagnosis(
            "TLS certificate not trusted", "The server's certificate did not verify.", TRUST_FIX
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
        r"AUTH.*not supported|No suitable authentication method|does not support AUTH|"
        r"Unrecognized authentication type",
        Diagnosis(
            "Authentication method not offered",
            "The server does not offer the authentication method this server needs.",
            "Check the port and Connection Security: many servers offer AUTH only after TLS.",
        ),
    ),
    ReplyRule(
        r"^534|AUTHENTICATIONFAILED|Authentication (failed|aborted)|Invalid credentials",
        AUTH_REFUSED,
    ),
    ReplyRule(
        r"^5\d\d 5\.1\.\d",
        Diagnosis(
            "Recipient refused",
            "A recipient address was refused (bad address or unknown mailbox).",
            "Check the address for typing errors; the server knows no such mailbox.",
        ),
    ),
    ReplyRule(
        r"^5\d\d 5\.(3\.4|2\.3)\b",
        Diagnosis(
            "Message too large",
            "The message is too large for the server.",
            "Send large files as links, and set Maximum Message Size to the server's limit so "
            "such messages are refused when they are queued.",
        ),
    ),
    ReplyRule(
        r"^5\d\d 5\.7\.\d",
        Diagnosis(
            "Refused by the server's policy",
            "The server's policy refused the message.",
            "The server's reply says which policy; ask its administrator if it is not clear.",
        ),
    ),
)


@functools.cache
def _rules(provider_key: str | None) -> tuple[ReplyRule, ...]:
    """The server's provider's rules first, then every provider's `anywhere` rules, then GENERIC."""
    from mailgate import providers

    own = providers.REGISTRY[provider_key].replies if provider_key in providers.REGISTRY else ()
    others = tuple(
        rule
        for key, provider in providers.REGISTRY.items()
        if key != provider_key
        for rule in provider.replies
        if rule.anywhere
    )
    return (*own, *others, *GENERIC)


def match_reply(provider_key: str | None, text: str) -> ReplyRule | None:
    """The first rule that explains a reply (or error text) of a server of this provider."""
    return next((rule for rule in _rules(provider_key) if rule.matches(text)), None)


def diagnose_reply(provider_key: str | None, text: str) -> Diagnosis | None:
    """The diagnosis of the first matching rule; None for a reply nothing explains."""
    rule = match_reply(provider_key, text)
    return rule.diagnosis if rule else None


def transient_diagnosis(message: str) -> str:
    """The diagnosis of a failure to reach an identity provider (TLS trust, DNS, refused, timeout)."""
    found = diagnose_reply(None, message)
    if found is not None:
        return found.as_text()
    return "A transient failure; the refresh is retried with back-off."
