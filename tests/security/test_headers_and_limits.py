"""Attack 7: injecting script into a page, downgrading to http, riding a stale session.
Attack 8: a huge body buffered before any check, a message to thousands of recipients.
Attack 3: an OAuth token sent over a connection without TLS."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from mailgate import conf
from mailgate.api.models import APIKey
from mailgate.console import serve
from mailgate.outbox.compose import InvalidMessage
from mailgate.outbox.models import OutgoingMessage
from mailgate.outbox.submit import enqueue
from mailgate.servers.validation import validate_server


def test_every_page_carries_a_policy_without_inline_script(admin_client: Client) -> None:
    for path in ("/", "/settings/technical/mail-servers/add/", "/accounts/login/"):
        response = admin_client.get(path)
        policy = response["Content-Security-Policy"]
        script = next(d for d in policy.split(";") if d.strip().startswith("script-src"))
        assert "'unsafe-inline'" not in script and "frame-ancestors 'none'" in policy
        assert "<script>" not in response.content.decode()


def test_the_server_forms_script_is_a_file(admin_client: Client) -> None:
    response = admin_client.get("/settings/technical/mail-servers/form.js")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    assert b"server-defaults" in response.content


def _settings_in_subprocess(tmp_path: Path, script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script],
        env={
            **os.environ,
            "MAILGATE_HOME": str(tmp_path),
            "DJANGO_SETTINGS_MODULE": "mailgate.settings",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_is_clean_under_production_settings(tmp_path: Path) -> None:
    script = (
        "import django; django.setup(); from django.core.management import call_command; "
        "call_command('check', '--deploy', '--fail-level', 'WARNING')"
    )
    result = _settings_in_subprocess(
        tmp_path,
        script,
        MAILGATE_PUBLIC_URL="https://mail.example.com",
        MAILGATE_TRUSTED_PROXIES="127.0.0.1",
    )
    assert result.returncode == 0, result.stderr
    hsts = _settings_in_subprocess(
        tmp_path,
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SECURE, s.SESSION_COOKIE_AGE)",
        MAILGATE_PUBLIC_URL="https://mail.example.com",
        MAILGATE_SESSION_HOURS="8",
    )
    assert hsts.stdout.split() == ["31536000", "True", str(8 * 3600)]


def test_https_pages_carry_hsts(db: None, settings: Any) -> None:
    settings.SECURE_HSTS_SECONDS = 31536000
    response = Client().get("/accounts/login/", secure=True)
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")


def test_session_hours_default_to_12_and_are_parsed_strictly(tmp_path: Path) -> None:
    assert conf.load({"MAILGATE_HOME": str(tmp_path)}).session_hours == 12
    for bad in ("0", "twelve", "-3"):
        with pytest.raises(conf.SettingsError, match="MAILGATE_SESSION_HOURS"):
            conf.load({"MAILGATE_HOME": str(tmp_path), "MAILGATE_SESSION_HOURS": bad})


def test_a_session_expires_after_its_lifetime(admin: Any, time_machine: Any) -> None:
    import datetime as dt

    from django.conf import settings

    start = dt.datetime(2030, 1, 1, 8, 0, tzinfo=dt.UTC)
    time_machine.move_to(start, tick=False)
    client = Client()
    client.force_login(admin)
    assert client.get("/").status_code == 200
    later = start + dt.timedelta(seconds=settings.SESSION_COOKIE_AGE + 60)
    time_machine.move_to(later, tick=False)
    assert client.get("/").status_code == 302


def run_until_closed(server: Any) -> None:
    with contextlib.suppress(OSError, ValueError):  # the socket closed by server.close()
        server.run()


@pytest.fixture
def web(db: None) -> Iterator[int]:
    """The production waitress server (mailgate.console.serve) on a loopback port."""
    server = serve.make_server("127.0.0.1", 0)
    threading.Thread(target=run_until_closed, args=(server,), daemon=True).start()
    yield int(server.effective_port)
    server.close()


def test_a_body_larger_than_any_message_is_refused_before_it_is_read(
    web: int, settings: Any
) -> None:
    claimed = 1024 * 1024 * 1024  # 1 GiB announced; only the headers are sent
    with socket.create_connection(("127.0.0.1", web), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n" + f"Content-Length: {claimed}\r\n\r\n".encode()
        )
        answer = sock.recv(200)
    assert answer.startswith(b"HTTP/1.1 413"), answer


def test_a_message_to_too_many_recipients_is_refused(make_server: Any, settings: Any) -> None:
    make_server(name="main")
    settings.MAILGATE_MAX_RECIPIENTS = 500
    many = [f"r{i}@example.org" for i in range(501)]
    with pytest.raises(InvalidMessage) as caught:
        enqueue(from_address="app@example.com", to=many[:300], bcc=many[300:], text="x")
    assert "MAILGATE_MAX_RECIPIENTS" in caught.value.errors["to"]
    assert enqueue(from_address="app@example.com", to=many[:500], text="x").recipients_count == 500


def test_a_message_with_too_many_attachments_is_refused_through_the_api(
    make_server: Any, settings: Any
) -> None:
    make_server(name="main")
    settings.MAILGATE_MAX_ATTACHMENTS = 3
    _, secret = APIKey.issue("erp")
    item = {"filename": "a.txt", "content_base64": base64.b64encode(b"x").decode()}
    body = {"from": "app@example.com", "to": ["a@example.org"], "attachments": [item] * 4}
    response = Client(HTTP_AUTHORIZATION=f"Bearer {secret}").post(
        "/api/v1/messages", body, content_type="application/json"
    )
    assert response.status_code == 422
    assert "attachments" in response.json()["errors"]
    assert OutgoingMessage.objects.count() == 0


def test_recipient_cap_is_parsed_strictly(tmp_path: Path) -> None:
    assert conf.load({"MAILGATE_HOME": str(tmp_path)}).max_recipients == 500
    with pytest.raises(conf.SettingsError, match="MAILGATE_MAX_RECIPIENTS"):
        conf.load({"MAILGATE_HOME": str(tmp_path), "MAILGATE_MAX_RECIPIENTS": "lots"})


def test_an_oauth_server_without_tls_to_a_remote_host_is_refused() -> None:
    verdict = validate_server(
        {
            "name": "Sales",
            "auth_method": "outlook",
            "username": "sales@contoso.com",
            "client_id": "11111111-2222-3333-4444-555555555555",
            "client_secret": "secret",
            "smtp_host": "smtp.office365.com",
            "smtp_port": 25,
            "smtp_security": "none",
        },
        existing=None,
    )
    assert "smtp_security" in verdict.errors
    assert "never sent unencrypted" in verdict.errors["smtp_security"][0]
