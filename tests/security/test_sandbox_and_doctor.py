"""Attack 12: a web page the developer visits drives the sandbox's control API (cross-site form post,
DNS rebinding); production quietly trusting a non-default identity endpoint or CA file."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from mailgate.diagnostics.health import system_findings
from mailgate.sandbox.server import Sandbox


def test_a_cross_site_form_post_cannot_drive_the_control_api(sandbox: Sandbox) -> None:
    # What an HTML form on any site can send to 127.0.0.1 without a CORS preflight.
    response = httpx.post(
        f"{sandbox.http_url}/sandbox/control/set_faults",
        content=b'{"fail": 503}',
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 415
    assert response.json()["field"] == "Content-Type"
    assert sandbox.control.snapshot()["faults"]["fail"] is None


def test_a_rebound_host_name_cannot_drive_or_read_the_control_api(sandbox: Sandbox) -> None:
    for method in ("GET", "POST"):
        response = httpx.request(
            method,
            f"{sandbox.http_url}/sandbox/control/snapshot",
            headers={"Host": "attacker.example", "Content-Type": "application/json"},
            content=b"{}",
        )
        assert response.status_code == 403
        assert response.json()["field"] == "Host"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_loopback_names_with_json_still_work(sandbox: Sandbox, host: str) -> None:
    port = sandbox.http_url.rsplit(":", 1)[1]
    response = httpx.post(
        f"{sandbox.http_url}/sandbox/control/counters",
        json={},
        headers={"Host": f"{host}:{port}"},
    )
    assert response.status_code == 200


def _checks(findings: list[Any]) -> set[str]:
    return {f.check for f in findings}


def test_doctor_warns_of_moved_identity_endpoints_in_production(
    db: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MAILGATE_PUBLIC_URL = "https://mail.example.com"
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    settings.MAILGATE_MICROSOFT_LOGIN_URL = "https://login.microsoftonline.com"
    settings.MAILGATE_GOOGLE_AUTH_URL = "https://accounts.google.com/o/oauth2/v2/auth"
    settings.MAILGATE_GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
    assert "identity_endpoints" not in _checks(system_findings())
    settings.MAILGATE_MICROSOFT_LOGIN_URL = "https://login.evil.example"
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/extra.pem")
    (finding,) = [f for f in system_findings() if f.check == "identity_endpoints"]
    assert "MAILGATE_MICROSOFT_LOGIN_URL=https://login.evil.example" in finding.detail
    assert "SSL_CERT_FILE=/etc/ssl/extra.pem" in finding.detail


def test_doctor_leaves_a_development_setup_alone(
    db: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MAILGATE_PUBLIC_URL = "http://127.0.0.1:8000"
    settings.MAILGATE_MICROSOFT_LOGIN_URL = "http://127.0.0.1:9000"
    monkeypatch.setenv("SSL_CERT_FILE", "/tmp/sandbox-ca.pem")
    assert "identity_endpoints" not in _checks(system_findings())


def test_the_system_trust_store_as_ssl_cert_file_is_no_finding(
    db: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MAILGATE_PUBLIC_URL = "https://mail.example.com"
    settings.MAILGATE_MICROSOFT_LOGIN_URL = "https://login.microsoftonline.com"
    settings.MAILGATE_GOOGLE_AUTH_URL = "https://accounts.google.com/o/oauth2/v2/auth"
    settings.MAILGATE_GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    assert "identity_endpoints" not in _checks(system_findings())
