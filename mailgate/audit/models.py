"""One row per security event; names only, never values."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

KINDS = {
    "sign_in": "Signed in",
    "sign_in_failed": "Sign-in failed",
    "sign_in_throttled": "Sign-in refused (too many failures)",
    "server_created": "Server created",
    "server_changed": "Server changed",
    "server_deleted": "Server deleted",
    "secret_replaced": "Secret replaced",
    "connected": "Account connected",
    "disconnected": "Account disconnected",
    "tokens_discarded": "Tokens discarded",
    "keys_rotated": "Encryption keys rotated",
    "apikey_created": "API key created",
    "apikey_revoked": "API key revoked",
}


class AuditEvent(models.Model):
    at = models.DateTimeField(default=timezone.now, db_index=True)
    kind = models.CharField(max_length=30, choices=list(KINDS.items()))
    actor = models.CharField(max_length=200, blank=True, help_text="Who did it (account, key).")
    subject = models.CharField(max_length=200, blank=True, help_text="What it was done to.")
    fields = models.JSONField(default=list, blank=True, help_text="Names of changed fields.")
    address = models.CharField(max_length=64, blank=True, help_text="The client's address.")

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.kind} {self.subject}"

    def as_dict(self) -> dict[str, object]:
        return {
            "at": self.at.isoformat(),
            "kind": self.kind,
            "actor": self.actor,
            "subject": self.subject,
            "fields": self.fields,
            "address": self.address,
        }
