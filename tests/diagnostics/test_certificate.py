"""TLS Certificate servers through the same transport code: the client certificate is presented at
STARTTLS to a loopback server that requires one."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailgate.diagnostics.connection import run_connection_test
from mailgate.sandbox.ca import SandboxCA
from mailgate.servers.models import MailServer, ServerStatus
from tests.smtpsink import SMTPSink


def client_certificate(ca_dir: Path) -> tuple[str, str]:
    """A client certificate (PEM) and key issued by a throw-away CA whose files live in ca_dir."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test client CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailgate")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        # Python 3.13's default contexts verify strictly (VERIFY_X509_STRICT): the leaf names
        # its issuer's key, the CA says it signs certificates.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (ca_dir / "client-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


@pytest.fixture
def mtls_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SMTPSink, str, str]]:
    server_ca = SandboxCA(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(server_ca.ca_file))
    cert, key = client_certificate(tmp_path)
    context = server_ca.server_context()
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(tmp_path / "client-ca.pem"))
    with SMTPSink(tls_context=context) as sink:
        yield sink, cert, key


def certificate_server(sink: SMTPSink, cert: str, key: str | None) -> MailServer:
    server = MailServer.objects.create(
        name="Certificate relay",
        auth_method="certificate",
        username="app@example.com",
        certificate=cert,
        private_key=key or "",
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_security="starttls",
    )
    return server


def test_a_certificate_server_passes_with_its_client_certificate(
    db: None, mtls_sink: tuple[SMTPSink, str, str]
) -> None:
    sink, cert, key = mtls_sink
    server = certificate_server(sink, cert, key)
    result = run_connection_test(server)
    assert result.ok, result.summary()
    assert "SMTP authenticate (client certificate)" in [s.name for s in result.steps]
    assert sink.received == []
    server.refresh_from_db()
    assert server.status == ServerStatus.READY


def test_without_the_client_certificate_the_tls_step_fails(
    db: None, mtls_sink: tuple[SMTPSink, str, str]
) -> None:
    sink, _, _ = mtls_sink
    server = MailServer.objects.create(
        name="No cert",
        auth_method="password",
        username="",
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_security="starttls",
    )
    result = run_connection_test(server)
    failed = result.failed
    assert failed is not None and failed.name == "SMTP STARTTLS", result.summary()
    assert "closed the connection" in failed.detail or "certificate" in failed.detail
