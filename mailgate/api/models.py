"""REST API keys: only a SHA-256 hash is stored; the key itself is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

KEY_PREFIX = "mg_"
# The visible part identifies a key in lists and logs without revealing it.
PREFIX_LENGTH = len(KEY_PREFIX) + 8


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class APIKey(models.Model):
    name = models.CharField("Name", max_length=100, unique=True)
    prefix = models.CharField(max_length=PREFIX_LENGTH)
    key_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def issue(cls, name: str, created_by: models.Model | None = None) -> tuple[APIKey, str]:
        """Create a key; return the row and the key, which is not stored and cannot be shown again."""
        key = KEY_PREFIX + secrets.token_urlsafe(32).replace("-", "x").replace("_", "y")
        row = cls.objects.create(
            name=name, prefix=key[:PREFIX_LENGTH], key_hash=hash_key(key), created_by=created_by
        )
        return row, key

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
