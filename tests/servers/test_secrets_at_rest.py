"""Secrets typed into the console are not in the database file (SQLite) or a pg_dump (PostgreSQL)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from mailgate.api.models import APIKey
from mailgate.servers.models import MailServer
from tests.servers.conftest import make_certificate, outlook_data, password_data

ADD = "/settings/technical/mail-servers/add/"
CLIENT_SECRET = "Kq8Q~plaintext-client-secret-AT-REST-0001"
PASSWORD = "plaintext-mailbox-password-AT-REST-0002"


def database_bytes() -> bytes:
    """The raw bytes of the test database: the SQLite file (+ WAL) or its in-memory image, or pg_dump."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        name = str(settings["NAME"])
        if "mode=memory" in name or name == ":memory:":
            # sqlite3_serialize: the exact page image a file of this database would hold.
            connection.ensure_connection()
            return bytes(connection.connection.serialize())  # type: ignore[union-attr]
        files = [Path(name), Path(name + "-wal")]
        return b"".join(f.read_bytes() for f in files if f.exists())
    assert connection.vendor == "postgresql", connection.vendor
    env = {**os.environ, "PGPASSWORD": str(settings.get("PASSWORD") or "")}
    command = ["pg_dump", "--no-owner", "-h", str(settings["HOST"] or "127.0.0.1")]
    command += [
        "-p",
        str(settings["PORT"] or 5432),
        "-U",
        str(settings["USER"]),
        str(settings["NAME"]),
    ]
    result = subprocess.run(command, capture_output=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.mark.django_db(transaction=True)
def test_console_secrets_are_only_ciphertext_at_rest(admin: User) -> None:
    client = Client()
    client.force_login(admin)
    cert, key = make_certificate()
    key_body = key.splitlines()[1]
    assert client.post(ADD, outlook_data(client_secret=CLIENT_SECRET)).status_code == 302
    assert client.post(ADD, password_data(password=PASSWORD)).status_code == 302
    certificate = password_data(
        name="Cert", auth_method="certificate", password="", certificate=cert, private_key=key
    )
    assert client.post(ADD, certificate).status_code == 302
    response = client.post("/settings/api-keys/", {"name": "erp"})
    api_key = re.search(r'value="(mg_[^"]+)"', response.content.decode()).group(1)  # type: ignore[union-attr]

    raw = database_bytes()

    for plaintext in (CLIENT_SECRET, PASSWORD, key_body, api_key):
        assert plaintext.encode() not in raw
    # The stored values are there, as ciphertext / hash: the bytes read are the right ones.
    sales = MailServer.objects.get(name="Sales")
    assert sales.client_secret.ciphertext.encode() in raw  # type: ignore[union-attr]
    assert MailServer.objects.get(name="Relay").password.ciphertext.encode() in raw  # type: ignore[union-attr]
    assert APIKey.objects.get().key_hash.encode() in raw
    assert b"sales@contoso.com" in raw
