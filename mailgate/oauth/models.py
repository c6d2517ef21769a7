"""The OAuth state of a sign-in in progress, and the grant (tokens) of a connected server."""

from __future__ import annotations

import datetime as dt
import hashlib

from django.db import models
from django.utils import timezone

from mailgate.crypto import EncryptedField

STATE_LIFETIME = dt.timedelta(minutes=10)
# "Token Valid" means a token was obtained or refreshed successfully within this window; the
# background step refreshes idle grants after REFRESH_IDLE_AFTER so a healthy grant stays valid.
TOKEN_VALID_FOR = dt.timedelta(hours=24)
REFRESH_IDLE_AFTER = dt.timedelta(hours=12)
# Access tokens are reused until this long before they expire.
EXPIRY_MARGIN = dt.timedelta(minutes=5)


def digest(value: str) -> str:
    """SHA-256 hex of a value that must be matched but never stored (state, session key)."""
    return hashlib.sha256(value.encode()).hexdigest()


class OAuthState(models.Model):
    """One sign-in started by an administrator: single use, bound to the session and the server."""

    state_hash = models.CharField(max_length=64, unique=True)
    session_hash = models.CharField(max_length=64)
    server = models.ForeignKey(
        "servers.MailServer", on_delete=models.CASCADE, related_name="oauth_states"
    )
    provider = models.CharField(max_length=20)
    code_verifier = EncryptedField()
    redirect_uri = models.CharField(max_length=1000)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"sign-in for server {self.server_id} started {self.created_at:%Y-%m-%d %H:%M}"

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        return (now or timezone.now()) - self.created_at > STATE_LIFETIME


class Grant(models.Model):
    """The tokens of a connected OAuth server (refresh and access tokens encrypted at rest).

    Refreshes are single flight across threads, processes and machines: the refresh is claimed on
    this row (refresh_claim, a compare-and-swap) and the provider is called with no lock held;
    retry state for transient failures lives here too.
    """

    server = models.OneToOneField(
        "servers.MailServer", on_delete=models.CASCADE, related_name="oauth_grant"
    )
    provider = models.CharField(max_length=20)
    account = models.CharField(max_length=320)
    client_id = models.CharField(max_length=200)
    scopes = models.TextField(blank=True, help_text="Scopes requested (used again at refresh).")
    granted_scopes = models.TextField(blank=True, help_text="Scopes the provider reported.")
    refresh_token = EncryptedField()
    access_token = EncryptedField()
    access_expires_at = models.DateTimeField(null=True, blank=True)
    connected_at = models.DateTimeField(default=timezone.now)
    last_refresh_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    refresh_count = models.PositiveIntegerField(default=0)

    is_dead = models.BooleanField(default=False, help_text="Reconnect required.")
    failures = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_code = models.CharField(max_length=100, blank=True)
    last_error_diagnosis = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    # The refresh in progress: who claimed it, and when the claim lapses if it never finishes.
    refresh_claim = models.CharField(max_length=32, blank=True)
    refresh_claimed_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.provider} grant for {self.account}"

    def is_token_valid(self, now: dt.datetime | None = None) -> bool:
        """True when the grant is alive and a token was obtained or refreshed within TOKEN_VALID_FOR."""
        now = now or timezone.now()
        return (
            not self.is_dead
            and self.last_success_at is not None
            and now - self.last_success_at <= TOKEN_VALID_FOR
        )

    def has_usable_access_token(self, now: dt.datetime | None = None) -> bool:
        now = now or timezone.now()
        return (
            self.access_token is not None
            and self.access_expires_at is not None
            and self.access_expires_at - EXPIRY_MARGIN > now
        )

    def scope_list(self) -> list[str]:
        return (self.granted_scopes or self.scopes).split()
