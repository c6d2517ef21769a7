"""The relay's certificate: MAILGATE_SMTP_TLS_CERT / _KEY, or a self-signed one made once and kept."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger("mailgate.relay")

SELF_SIGNED_DAYS = 825


def self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate for hostname (and localhost, 127.0.0.1, ::1) in directory; made
    on the first call and reused after, so that a client which pinned it keeps working."""
    cert_path, key_path = directory / "smtp-tls-cert.pem", directory / "smtp-tls-key.pem"
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(
    cert: Path | None, key: Path | None, *, home: Path, hostname: str
) -> ssl.SSLContext:
    """The TLS context of the relay's listeners (TLS 1.2 or later)."""
    if cert is None or key is None:
        cert, key = self_signed(home, hostname)
        log.warning(
            "MAILGATE_SMTP_TLS_CERT is not set: the SMTP relay uses the self-signed certificate "
            "%s, which applications do not trust unless told to; set MAILGATE_SMTP_TLS_CERT and "
            "MAILGATE_SMTP_TLS_KEY to a certificate for the name applications connect to",
            cert,
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"MAILGATE_SMTP_TLS_CERT / MAILGATE_SMTP_TLS_KEY: cannot load {cert} with {key}: {exc}"
        ) from exc
    return context
