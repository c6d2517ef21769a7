"""The relay's certificate: the configured one, or a self-signed one made once (key 0600) with a warning."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from mailgate.relay.tls import self_signed, server_context

pytestmark = pytest.mark.nodb


def test_a_self_signed_certificate_is_made_once_with_a_private_key_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mailgate.relay"):
        server_context(None, None, home=tmp_path, hostname="mail.contoso.example")
    assert "MAILGATE_SMTP_TLS_CERT is not set" in caplog.text
    cert, key = self_signed(tmp_path, "other.example")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = cert.read_bytes()
    server_context(None, None, home=tmp_path, hostname="mail.contoso.example")
    assert cert.read_bytes() == first  # reused: a client that pinned it keeps working


def test_a_configured_certificate_that_does_not_load_names_both_settings(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(
        ValueError, match="MAILGATE_SMTP_TLS_CERT / MAILGATE_SMTP_TLS_KEY: cannot load"
    ):
        server_context(tmp_path / "cert.pem", tmp_path / "key.pem", home=tmp_path, hostname="x")


def test_a_configured_certificate_is_used_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = self_signed(tmp_path / "made", "mail.contoso.example")
    with caplog.at_level(logging.WARNING, logger="mailgate.relay"):
        context = server_context(cert, key, home=tmp_path, hostname="x")
    assert context.cert_store_stats() is not None and "not set" not in caplog.text
    assert not (tmp_path / "smtp-tls-cert.pem").exists()


def test_plain_logins_are_for_loopback_peers_on_either_stack() -> None:
    """A dual-stack listener sees a local IPv4 client as ::ffff:127.0.0.1 (addresses parsed only)."""
    from mailgate.relay.server import is_loopback

    for peer in [
        ("127.0.0.1", 1),
        ("127.8.0.2", 1),
        ("::1", 1, 0, 0),
        ("::ffff:127.0.0.1", 1, 0, 0),
    ]:
        assert is_loopback(peer), peer
    for peer in [("192.0.2.7", 1), ("::ffff:192.0.2.7", 1, 0, 0), ("2001:db8::1", 1, 0, 0), "x"]:
        assert not is_loopback(peer), peer
