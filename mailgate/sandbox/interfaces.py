"""The seams between the sandbox's identity side (state, tokens, control API) and its mail side (SMTP, Dovecot).

The identity side implements `MailPolicy` over its state; the mail side implements `MailStore` and
`MailboxDelivery`. The runner (`mailgate sandbox`) wires them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class SubmissionLimits:
    per_minute: int = 30
    recipients_per_day: int = 10_000
    connections: int = 3


class MailPolicy(Protocol):
    """What the Exchange-like SMTP server asks the identity side."""

    def now(self) -> float:
        """The sandbox clock in epoch seconds (it can be advanced or scaled by the control API)."""

    def verify_access_token(self, token: str) -> dict[str, Any]:
        """Claims of a valid sandbox access token (signature, expiry, Outlook audience), else raise
        mailgate.sandbox.tokens.InvalidToken. Scope and user are checked by the caller."""

    def mailbox_exists(self, address: str) -> bool:
        """True when the address is a sandbox user (or shared mailbox)."""

    def smtp_auth_disabled(self, address: str) -> str | None:
        """None when SMTP AUTH is allowed for this mailbox, else "Tenant" or "Mailbox" (which switch is off)."""

    def may_send_as(self, authenticated: str, from_address: str) -> bool:
        """True when `authenticated` may submit mail with From `from_address` (itself, or send-as granted)."""

    def submission_limits(self, address: str) -> SubmissionLimits:
        """The per-mailbox limits in force (Exchange Online's by default; the control API can lift them)."""

    def token_service(self, claims: dict[str, Any]) -> str:
        """The mailbox a token acts for: `upn` / `preferred_username` (lower-cased)."""


class MailStore(Protocol):
    """Every message the sandbox SMTP server accepted, for the control API and the mail-catcher page."""

    def add(
        self, *, mail_from: str, rcpt_tos: list[str], data: bytes, authenticated_as: str
    ) -> str:
        """Store an accepted message; return its id (used as the queue ID in the 250 reply)."""

    def list(self) -> list[dict[str, Any]]:
        """Summaries, newest first: id, received_at, mail_from, rcpt_tos, subject, size, authenticated_as."""

    def get(self, message_id: str) -> dict[str, Any] | None:
        """One summary plus `raw` (the message as text)."""

    def clear(self) -> None: ...


class MailboxDelivery(Protocol):
    """Puts a message into a sandbox user's IMAP/POP mailbox (Dovecot)."""

    def deliver(self, address: str, raw: bytes) -> None: ...
