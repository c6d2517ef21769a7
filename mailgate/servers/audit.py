"""Audit events of mail server settings: created, changed (field names), deleted, secret replaced."""

from __future__ import annotations

from typing import Any

from mailgate.audit.log import record
from mailgate.crypto import Sealed
from mailgate.servers.models import MailServer
from mailgate.servers.validation import SECRET_FIELDS

# Fields mailgate itself writes as it works: their changes are not settings changes.
STATE_FIELDS = {
    "id",
    "status",
    "status_detail",
    "hold_reason",
    "held_at",
    "last_test_at",
    "last_test_ok",
    "last_test_summary",
    "created_at",
    "updated_at",
}


def _settings_fields() -> list[str]:
    return [f.attname for f in MailServer._meta.concrete_fields if f.attname not in STATE_FIELDS]


def _plain(value: Any) -> str:
    if isinstance(value, Sealed):
        return value.reveal()
    return str(value or "")


def _same_secret(old: Any, new: Any) -> bool:
    """Equal ciphertexts, or different ones of the same secret (a key rotation re-encrypts)."""
    if old == new or (not old and not new):
        return True
    try:
        return _plain(old) == _plain(new)
    except Exception:  # a value no key decrypts any more: treat it as replaced
        return False


def remember(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    """Keep the stored settings before a save, to name the changed fields afterwards."""
    if raw or not instance.pk:
        return
    instance._audit_old = MailServer.objects.filter(pk=instance.pk).first()


def saved(sender: Any, instance: Any, created: bool, raw: bool = False, **kwargs: Any) -> None:
    if raw:
        return
    if created:
        record("server_created", subject=instance.name)
        return
    old = getattr(instance, "_audit_old", None)
    instance._audit_old = None
    if old is None:
        return
    fields = _settings_fields()
    update_fields = kwargs.get("update_fields")
    if update_fields is not None:
        fields = [f for f in fields if f in update_fields]
    secrets = [f for f in fields if f in SECRET_FIELDS]
    replaced = [f for f in secrets if not _same_secret(getattr(old, f), getattr(instance, f))]
    changed = [
        f for f in fields if f not in SECRET_FIELDS and getattr(old, f) != getattr(instance, f)
    ]
    if changed:
        record("server_changed", subject=instance.name, fields=changed)
    if replaced:
        record("secret_replaced", subject=instance.name, fields=replaced)


def deleted(sender: Any, instance: MailServer, **kwargs: Any) -> None:
    record("server_deleted", subject=instance.name)
