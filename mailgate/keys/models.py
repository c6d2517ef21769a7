"""API keys: only a SHA-256 hash is stored; the key itself is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from mailgate.audit.log import record

KEY_PREFIX = "mg_"
# The visible part identifies a key in lists and logs without revealing it.
PREFIX_LENGTH = len(KEY_PREFIX) + 8


# What a key may do. `send`: queue mail and read the messages it queued; `read`: read every message
# and server; `admin`: both. A key without a scope given is a `send` key.
SEND, READ, ADMIN = "send", "read", "admin"
SCOPES = {
    SEND: "queue mail and read the messages this key queued",
    READ: "read every message and every server (queues nothing)",
    ADMIN: "queue mail and read everything",
}
SCOPE_ACTIONS = {SEND: {"send"}, READ: {"read_all"}, ADMIN: {"send", "read_all"}}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class APIKey(models.Model):
    name = models.CharField("Name", max_length=100, unique=True)
    prefix = models.CharField(max_length=PREFIX_LENGTH)
    key_hash = models.CharField(max_length=64, unique=True)
    scope = models.CharField("Scope", max_length=10, choices=[(k, k) for k in SCOPES], default=SEND)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # The API app's table and migrations, as before the model moved to this package.
        app_label = "api"
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @property
    def owner_tag(self) -> str:
        """How the messages this key queues are marked (OutgoingMessage.submitted_by)."""
        return f"apikey:{self.pk}"

    def allows(self, action: str) -> bool:
        """True when the key's scope allows the action: `send` or `read_all`."""
        return action in SCOPE_ACTIONS.get(self.scope, set())

    @classmethod
    def issue(
        cls, name: str, created_by: models.Model | None = None, *, scope: str = SEND
    ) -> tuple[APIKey, str]:
        """Create a key; return the row and the key, which is not stored and cannot be shown again."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        key = KEY_PREFIX + secrets.token_urlsafe(32).replace("-", "x").replace("_", "y")
        row = cls.objects.create(
            name=name,
            prefix=key[:PREFIX_LENGTH],
            key_hash=hash_key(key),
            created_by=created_by,
            scope=scope,
        )
        record("apikey_created", subject=f"{name} ({scope})")
        return row, key

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
            record("apikey_revoked", subject=self.name)
