"""The verifying TLS context: shared between connections, rebuilt when the trust changes."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from mailgate.sandbox.ca import SandboxCA
from mailgate.transports.base import tls_context
from mailgate.transports.credentials import Password


def test_the_context_is_shared_until_the_trust_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_ca, second_ca = SandboxCA(tmp_path / "one"), SandboxCA(tmp_path / "two")
    monkeypatch.setenv("SSL_CERT_FILE", str(first_ca.ca_file))
    shared = tls_context(None)
    assert tls_context(Password("user@corp.local", "not used")) is shared
    assert shared.verify_mode == ssl.CERT_REQUIRED and shared.check_hostname
    assert shared.minimum_version == ssl.TLSVersion.TLSv1_2
    monkeypatch.setenv("SSL_CERT_FILE", str(second_ca.ca_file))
    other = tls_context(None)
    assert other is not shared
    # The same file rewritten (a renewed CA bundle) is read again.
    second_ca.ca_file.write_bytes(first_ca.ca_file.read_bytes() + second_ca.ca_file.read_bytes())
    stat = second_ca.ca_file.stat()
    os.utime(second_ca.ca_file, (stat.st_atime, stat.st_mtime + 5))
    assert tls_context(None) is not other
