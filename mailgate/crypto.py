"""Secrets at rest: every password, client secret, private key and token is Fernet-encrypted.

Values are kept encrypted in memory as `Sealed` and decrypted only where used (`reveal()`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models


class DecryptionError(Exception):
    """A stored secret cannot be decrypted with any configured key."""


@cache
def _fernet(keys: tuple[bytes, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k) for k in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.MAILGATE_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    try:
        return fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise DecryptionError(
            "a stored secret cannot be decrypted: MAILGATE_ENCRYPTION_KEYS lacks the key it was "
            "written with (keep old keys after the newest until `mailgate rotate-keys` has run)"
        ) from exc


class Sealed:
    """An encrypted secret; str() and repr() never show the plaintext."""

    __slots__ = ("ciphertext",)

    def __init__(self, ciphertext: str) -> None:
        self.ciphertext = ciphertext

    @classmethod
    def seal(cls, plaintext: str) -> Sealed:
        return cls(encrypt(plaintext))

    def reveal(self) -> str:
        return decrypt(self.ciphertext)

    def rotated(self) -> Sealed:
        return Sealed(fernet().rotate(self.ciphertext.encode()).decode())

    def __repr__(self) -> str:
        return "<Sealed secret>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sealed) and other.ciphertext == self.ciphertext

    def __hash__(self) -> int:
        return hash(self.ciphertext)


class EncryptedField(models.TextField):
    """A text column holding Fernet ciphertext; Python values are `Sealed` or None.

    Assigning a plain str encrypts it on save. An empty string is stored as empty (no secret).
    """

    description = "Fernet-encrypted text"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("blank", True)
        kwargs.setdefault("default", "")
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Sealed | None:
        return Sealed(value) if value else None

    def to_python(self, value: Any) -> Sealed | None:
        if value is None or value == "":
            return None
        if isinstance(value, Sealed):
            return value
        return Sealed.seal(str(value))

    def get_prep_value(self, value: Any) -> str:
        if value is None or value == "":
            return ""
        if isinstance(value, Sealed):
            return value.ciphertext
        return encrypt(str(value))

    def value_to_string(self, obj: Any) -> str:
        return ""  # never serialized: dumps and exports carry no secrets


def encrypted_fields() -> list[tuple[type[models.Model], list[str]]]:
    """Every (model, [field names]) pair holding encrypted values, for key rotation."""
    from django.apps import apps

    found = []
    for model in apps.get_models():
        names = [f.name for f in model._meta.get_fields() if isinstance(f, EncryptedField)]
        if names:
            found.append((model, names))
    return found


def rotate_all() -> int:
    """Re-encrypt every stored secret with the newest key; return how many values changed."""
    from django.db import transaction

    count = 0
    for model, names in encrypted_fields():
        with transaction.atomic():
            for obj in model._default_manager.select_for_update().all().iterator():
                changed = []
                for name in names:
                    value = getattr(obj, name)
                    if isinstance(value, Sealed):
                        setattr(obj, name, value.rotated())
                        changed.append(name)
                if changed:
                    obj.save(update_fields=changed)
                    count += len(changed)
    return count
