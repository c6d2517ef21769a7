"""Form data and certificates for the mail server tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "Xy8Q~secret-VALUE-that-must-never-be-shown-123"


def outlook_data(**overrides: Any) -> dict[str, Any]:
    """POST data of a complete Outlook server as the console sends it (empty = defaults)."""
    data: dict[str, Any] = {
        "name": "Sales",
        "auth_method": "outlook",
        "username": "sales@contoso.com",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "client_secret_expires_on": "",
        "tenant": "",
        "cloud": "global",
        "smtp_host": "",
        "smtp_port": "",
        "smtp_security": "starttls",
        "from_filter": "",
        "send_as": "",
        "priority": "10",
        "active": "on",
        "incoming_protocol": "none",
        "incoming_host": "",
        "incoming_port": "",
        "incoming_security": "ssl",
        "incoming_folders": "INBOX",
        "poll_interval": "",
        "after_fetch": "keep",
        "move_to_folder": "",
        "webhook_url": "",
        "limit_per_minute": "",
        "limit_recipients_per_day": "",
        "limit_connections": "",
        "max_message_bytes": "",
    }
    data.update(overrides)
    return data


def password_data(**overrides: Any) -> dict[str, Any]:
    data = outlook_data(
        name="Relay",
        auth_method="password",
        username="relay@example.com",
        password="relay-Passw0rd-plaintext",
        client_id="",
        client_secret="",
        smtp_host="smtp.example.com",
    )
    data.update(overrides)
    return data


def make_certificate(
    *, days: int = 365, start_days: int = -1, key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[str, str]:
    """A self-signed client certificate and its private key, both PEM."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client.example.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=start_days))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


@pytest.fixture
def certificate_pair() -> tuple[str, str]:
    return make_certificate()
