from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.db import connection

from mailgate.crypto import DecryptionError, Sealed, rotate_all
from mailgate.servers.models import MailServer


def test_sealed_values_never_show_the_plaintext(db: None) -> None:
    sealed = Sealed.seal("hunter2-secret")
    assert "hunter2" not in repr(sealed) and "hunter2" not in str(sealed)
    assert sealed.reveal() == "hunter2-secret"


def test_a_saved_secret_is_ciphertext_in_the_database(db: None) -> None:
    server = MailServer.objects.create(
        name="s", username="a@example.com", password="hunter2-secret"
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT password FROM servers_mailserver WHERE id = %s", [server.pk])
        (raw,) = cursor.fetchone()
    assert "hunter2" not in raw
    reloaded = MailServer.objects.get(pk=server.pk)
    assert isinstance(reloaded.password, Sealed)
    assert reloaded.password.reveal() == "hunter2-secret"


def test_rotate_keys_re_encrypts_with_the_newest_key(
    db: None, settings: pytest.FixtureRequest
) -> None:
    old_keys = list(settings.MAILGATE_ENCRYPTION_KEYS)  # type: ignore[attr-defined]
    MailServer.objects.create(name="s", username="a@example.com", client_secret="s3cret-value")
    new_key = Fernet.generate_key()
    settings.MAILGATE_ENCRYPTION_KEYS = [new_key, *old_keys]  # type: ignore[attr-defined]
    assert rotate_all() == 1
    settings.MAILGATE_ENCRYPTION_KEYS = [new_key]  # type: ignore[attr-defined]
    assert MailServer.objects.get().client_secret.reveal() == "s3cret-value"  # type: ignore[union-attr]


def test_a_missing_key_is_a_clear_error(db: None, settings: pytest.FixtureRequest) -> None:
    MailServer.objects.create(name="s", username="a@example.com", client_secret="s3cret-value")
    settings.MAILGATE_ENCRYPTION_KEYS = [Fernet.generate_key()]  # type: ignore[attr-defined]
    with pytest.raises(DecryptionError, match="MAILGATE_ENCRYPTION_KEYS"):
        MailServer.objects.get().client_secret.reveal()  # type: ignore[union-attr]
