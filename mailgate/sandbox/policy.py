"""What the mail side (SMTP server, Dovecot introspection) asks the identity side: the `MailPolicy`."""

from __future__ import annotations

from typing import Any

from mailgate.sandbox.entra import EntraDirectory
from mailgate.sandbox.google_accounts import GoogleAccounts
from mailgate.sandbox.interfaces import SubmissionLimits
from mailgate.sandbox.params import lower
from mailgate.sandbox.store import StateStore
from mailgate.sandbox.tokens import InvalidToken, SigningKey

GMAIL_AUDIENCE = "https://mail.google.com/"
# The delegated permission an Outlook token needs per protocol; "smtp" also serves an independent
# SMTP submission server (Postfix + Dovecot SASL in the tests).
OUTLOOK_SCOPE_FOR_SERVICE = {
    "imap": "IMAP.AccessAsUser.All",
    "pop3": "POP.AccessAsUser.All",
    "smtp": "SMTP.Send",
}


class SandboxMailPolicy:
    """Token checks, mailboxes, SMTP AUTH switches, send-as and limits, over the directory."""

    def __init__(
        self,
        store: StateStore,
        directory: EntraDirectory,
        google: GoogleAccounts,
        signing_key: SigningKey,
    ) -> None:
        self.store = store
        self.directory = directory
        self.google = google
        self.signing_key = signing_key

    def now(self) -> float:
        return self.store.now()

    def verify_access_token(self, token: str) -> dict[str, Any]:
        """Claims of a live sandbox access token: a signed Outlook JWT, or an opaque Google token."""
        if token.startswith("ya29."):
            record = self.google.access_token(token)
            if record is None or record["revoked"]:
                raise InvalidToken("not a live Google access token of this sandbox")
            if record["exp"] <= self.now():
                raise InvalidToken("the token has expired")
            return {
                "aud": GMAIL_AUDIENCE,
                "scp": record["scope"],
                "email": record["email"],
                "azp": record["client_id"],
                "exp": int(record["exp"]),
            }
        return self.signing_key.verify_access_token(token, now=self.now())

    def mailbox_exists(self, address: str) -> bool:
        return (
            self.directory.user(address) is not None or self.google.user(lower(address)) is not None
        )

    def smtp_auth_disabled(self, address: str) -> str | None:
        return self.directory.smtp_auth_disabled(address)

    def may_send_as(self, authenticated: str, from_address: str) -> bool:
        return self.directory.may_send_as(authenticated, from_address)

    def submission_limits(self, address: str) -> SubmissionLimits:
        return self.directory.submission_limits(address)

    def token_service(self, claims: dict[str, Any]) -> str:
        """The mailbox a token acts for (lower-cased upn / preferred_username / email)."""
        for key in ("upn", "preferred_username", "email", "unique_name"):
            value = claims.get(key)
            if isinstance(value, str) and value:
                return value.lower()
        return ""

    def introspect(self, token: str, service: str) -> dict[str, Any]:
        """RFC 7662 answer for Dovecot: active only for a live token with the protocol's scope."""
        self.store.count(f"introspect_{service}")
        try:
            claims = self.verify_access_token(token)
        except InvalidToken:
            return {"active": False}
        scopes = str(claims.get("scp", "")).split()
        if claims.get("aud") == GMAIL_AUDIENCE:
            needed = GMAIL_AUDIENCE
        else:
            needed = OUTLOOK_SCOPE_FOR_SERVICE[service]
        username = self.token_service(claims)
        if needed not in scopes or not username or not self.mailbox_exists(username):
            return {"active": False}
        return {
            "active": True,
            "username": username,
            "email": username,
            "sub": str(claims.get("sub") or claims.get("oid") or username),
            "scope": " ".join(scopes),
            "exp": int(claims["exp"]),
            "client_id": str(claims.get("appid") or claims.get("azp") or ""),
            "token_type": "Bearer",
        }
