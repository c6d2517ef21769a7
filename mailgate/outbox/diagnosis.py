"""What a delivery error means and what happens next: one catalogue of known replies.

Kept in the outbox (not in the providers) because the classes are about the queue: send, defer,
slow down, hold the server, or fail the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from mailgate.transports.base import TransportError


class Action(StrEnum):
    DEFER = "defer"  # retry this message later with back-off
    THROTTLE = "throttle"  # slow the whole server down; the message keeps its retries
    HOLD = "hold"  # an account problem: hold every message of the server until it is fixed
    FAIL = "fail"  # this message can never be delivered as it is


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    action: Action
    diagnosis: str
    pause: float = 0.0  # THROTTLE: seconds to pause the server


def _rule(pattern: str, action: Action, diagnosis: str, pause: float = 0.0) -> Rule:
    return Rule(re.compile(pattern, re.I), action, diagnosis, pause)


# Matched against "<code> <enhanced> <text>" in order; the first match wins.
# Reference: https://learn.microsoft.com/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365
# Reference: https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits
# Reference: https://support.google.com/a/answer/3726730 (Gmail SMTP errors)
CATALOGUE: list[Rule] = [
    _rule(
        r"SmtpClientAuthentication is disabled for the Tenant",
        Action.HOLD,
        "SMTP AUTH is disabled for the whole tenant. Enable it: Exchange admin center > Settings > "
        "Mail flow > uncheck 'Turn off SMTP AUTH protocol for your organization', or "
        "Set-TransportConfig -SmtpClientAuthenticationDisabled $false "
        "(https://aka.ms/smtp_auth_disabled).",
    ),
    _rule(
        r"SmtpClientAuthentication is disabled for the Mailbox",
        Action.HOLD,
        "SMTP AUTH is disabled for this mailbox. Enable 'Authenticated SMTP' in Microsoft 365 admin "
        "center > Users > Active users > Mail > Manage email apps, or Set-CASMailbox <mailbox> "
        "-SmtpClientAuthenticationDisabled $false.",
    ),
    _rule(
        r"security defaults",
        Action.HOLD,
        "Security defaults block SMTP AUTH for this tenant: disable security defaults or use "
        "Conditional Access that allows the app.",
    ),
    _rule(
        r"\b5\.7\.139\b",
        Action.HOLD,
        "Exchange refused SMTP authentication for the account (5.7.139): check that SMTP AUTH is "
        "enabled for the tenant and the mailbox and that no policy blocks it.",
    ),
    _rule(
        r"SendAsDenied|not allowed to send as",
        Action.HOLD,
        "The mailbox may not send with this From address. Grant Send As "
        "(Add-RecipientPermission <from> -AccessRights SendAs -Trustee <mailbox>) or send from the "
        "mailbox's own address; list granted addresses in the server's Send As Addresses.",
    ),
    _rule(
        r"Sender throttled due to continuous",
        Action.THROTTLE,
        "Exchange throttles this mailbox after repeated errors; Microsoft decides how long.",
        3600,
    ),
    _rule(
        r"SubmissionQuotaExceeded|submission quota",
        Action.THROTTLE,
        "The mailbox reached its recipient rate limit (10,000 recipients in 24 hours for Exchange "
        "Online); sending resumes when the rolling window allows it.",
        3600,
    ),
    _rule(
        r"\b5\.4\.5\b|Daily (user )?sending (quota|limit) exceeded",
        Action.THROTTLE,
        "Gmail's daily sending limit for this account is reached; sending resumes later.",
        3600,
    ),
    _rule(
        r"\b4\.3\.2\b|Concurrent connections limit|sender thread limit",
        Action.THROTTLE,
        "The server limits concurrent connections or submissions for this mailbox (Exchange: 3); "
        "sending slows down.",
        60,
    ),
    _rule(
        r"\b4\.7\.0\b.*(rate|try again later|temporar)|\b421\b.*\b4\.7\.0\b",
        Action.THROTTLE,
        "The server asks to slow down.",
        60,
    ),
    _rule(
        r"\b5\.7\.57\b|not authenticated to send",
        Action.HOLD,
        "The server refused mail without a successful authentication (5.7.57): the connection "
        "must use TLS and authenticate with a mailbox that has an Exchange Online licence.",
    ),
    _rule(
        r"^535\b|\b5\.7\.8\b",
        Action.HOLD,
        "The server refused the credentials (535): reconnect the account (OAuth) or replace the "
        "password; messages resume once a connection test passes.",
    ),
    _rule(
        r"\b5\.7\.3\b",
        Action.HOLD,
        "Authentication unsuccessful (5.7.3): the token was refused (wrong mailbox, missing "
        "SMTP.Send permission or an expired/revoked grant). Reconnect the account.",
    ),
    _rule(
        r"^530\b|\b5\.7\.0\b.*(authentication required|must issue a starttls)",
        Action.HOLD,
        "The server requires authentication or TLS before sending: check Connection Security and "
        "the credentials.",
    ),
    _rule(
        r"\b5\.2\.2\b.*(mailbox full|QuotaExceeded)",
        Action.HOLD,
        "The sending mailbox is full (Exchange keeps a copy in Sent Items): free space, then the "
        "queue resumes.",
    ),
]


@dataclass(frozen=True)
class Verdict:
    action: Action
    diagnosis: str
    pause: float = 0.0


def classify(error: TransportError) -> Verdict:
    """The action for a delivery error: catalogue first, then the reply class, then transient."""
    reply = error.reply
    subject = " ".join(str(p) for p in (reply.code, reply.enhanced, reply.text) if p) or str(error)
    for rule in CATALOGUE:
        if rule.pattern.search(subject):
            return Verdict(rule.action, rule.diagnosis, rule.pause)
    if error.step == "token":
        if error.permanent:
            return Verdict(
                Action.HOLD,
                error.diagnosis or "The OAuth grant cannot be used: reconnect the account.",
            )
        return Verdict(Action.DEFER, error.diagnosis or "The token endpoint failed for now.")
    if error.step == "auth" and error.permanent:
        return Verdict(
            Action.HOLD, error.diagnosis or "Authentication with the server is not possible."
        )
    if error.step in ("connect", "tls") and error.permanent and reply.code is None:
        # Configuration problems (no STARTTLS offered, no host): nothing a retry could fix.
        return Verdict(Action.HOLD, error.diagnosis or str(error))
    if reply.code is not None and reply.code >= 500:
        return Verdict(Action.FAIL, error.diagnosis or _generic_permanent(reply.enhanced))
    return Verdict(Action.DEFER, error.diagnosis or "A temporary problem; retrying later.")


def _generic_permanent(enhanced: str) -> str:
    if enhanced.startswith("5.1."):
        return "A recipient address was refused (bad address or unknown mailbox)."
    if enhanced.startswith("5.3.4") or enhanced.startswith("5.2.3"):
        return "The message is too large for the server."
    if enhanced.startswith("5.7."):
        return "The server's policy refused the message."
    return "The server refused the message permanently."
