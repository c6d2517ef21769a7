"""What every provider plugin declares: endpoints come from settings, the rest from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mailgate.providers.errors import TokenError
    from mailgate.providers.replies import ReplyRule


@dataclass(frozen=True)
class MailDefaults:
    smtp_host: str
    smtp_port: int
    smtp_security: str
    imap_host: str
    imap_port: int
    pop3_host: str
    pop3_port: int
    incoming_security: str = "ssl"


@dataclass(frozen=True)
class Limits:
    """Per-mailbox sending limits the provider documents."""

    per_minute: int
    recipients_per_day: int
    connections: int
    max_message_bytes: int


@dataclass(frozen=True)
class Diagnosis:
    """What happened, in plain words, and the setup step that fixes it."""

    title: str
    explanation: str
    fix: str

    def as_text(self) -> str:
        return f"{self.title}: {self.explanation} Fix: {self.fix}"


@dataclass(frozen=True)
class TokenSet:
    """A successful token endpoint answer. Access tokens are opaque strings, never decoded."""

    access_token: str
    expires_in: int
    refresh_token: str = ""
    scope: str = ""
    id_token: str = ""

    @classmethod
    def from_response(cls, token: dict[str, Any]) -> TokenSet:
        """The fields of a token response (RFC 6749 §5.1), liberal in what `expires_in` looks like."""
        try:
            expires_in = int(float(token.get("expires_in") or 3600))
        except (TypeError, ValueError):
            expires_in = 3600  # RFC 6749: RECOMMENDED, not required; assume the usual hour
        return cls(
            access_token=str(token["access_token"]),
            expires_in=max(expires_in, 0),
            refresh_token=str(token.get("refresh_token") or ""),
            scope=str(token.get("scope") or ""),
            id_token=str(token.get("id_token") or ""),
        )


class MailServer(Protocol):
    """The mail server settings a provider reads (servers.models.MailServer has them all).

    Declared here so that providers sit below servers: the provider layer never imports it.
    """

    username: str
    client_id: str
    client_secret: Any  # Sealed | None (EncryptedField)
    tenant: str
    cloud: str
    incoming_protocol: str

    @property
    def has_outgoing(self) -> bool: ...


class OAuthFlow(Protocol):
    """The OAuth 2.0 side of a provider: authorization URL, token endpoint calls, diagnosis."""

    def scopes(self, server: MailServer) -> list[str]:
        """The scopes the server needs (one consent covering sending and receiving)."""

    def required_scopes(self, server: MailServer) -> list[str]:
        """Scopes a token must carry for the server to work (checked at the callback)."""

    def setup_problems(self, server: MailServer) -> list[str]:
        """Provider-specific fields that keep a sign-in from starting, each with its fix."""

    def authorization_url(
        self, server: MailServer, *, state: str, code_verifier: str, redirect_uri: str
    ) -> str:
        """The provider's authorize URL for the authorization code flow with PKCE S256."""

    def exchange_code(
        self, server: MailServer, *, code: str, code_verifier: str, redirect_uri: str
    ) -> TokenSet:
        """Redeem an authorization code; raise TokenEndpointError / TransientHTTPError."""

    def refresh(self, server: MailServer, *, refresh_token: str, scopes: str) -> TokenSet:
        """Use a refresh token; raise TokenEndpointError / TransientHTTPError."""

    def revoke(self, server: MailServer, *, token: str) -> None:
        """Revoke a token where the provider offers an endpoint (no-op otherwise)."""

    def accounts_from_id_token(self, server: MailServer, id_token: str) -> set[str]:
        """The signed-in account's addresses named by the id_token (lower-cased); may be empty."""

    def explain(self, error: str, description: str) -> Diagnosis:
        """Plain explanation + fix for an authorize or token endpoint error."""

    def classify(self, exc: Exception) -> TokenError:
        """Map a failed refresh to ReconnectRequired / ClientCredentialsInvalid / TokenUnavailable."""


@dataclass(frozen=True)
class Provider:
    key: str
    label: str
    auth_method: str
    connect_label: str
    defaults: MailDefaults
    limits: Limits
    callback_path: str
    clouds: dict[str, MailDefaults] = field(default_factory=dict)
    flow: OAuthFlow | None = None
    replies: tuple[ReplyRule, ...] = ()  # server replies this provider's mail servers give


def revealed(value: object) -> str:
    """The plaintext of an EncryptedField value (a Sealed), or "" when no secret is stored."""
    from mailgate.crypto import Sealed

    return value.reveal() if isinstance(value, Sealed) else ""
