"""The OAuth2 Redirect URL is the one the browser comes back to: `run` derives it from --host /
--port when MAILGATE_PUBLIC_URL is unset, and the console and `doctor` warn when it is set to
another address than the one the console is opened at."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.core.cache import cache
from django.test import Client

from mailgate.conf import listen_url
from mailgate.diagnostics.health import system_findings

PASSWORD = "Port-test-password-1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[int, list[str]]]:
    """`mailgate run --port <free port>` with MAILGATE_PUBLIC_URL unset, on its own home."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env.update(
        MAILGATE_HOME=str(tmp_path / "home"),
        MAILGATE_ADMIN_EMAIL="admin@example.com",
        MAILGATE_ADMIN_PASSWORD=PASSWORD,
    )
    out = tmp_path / "out.txt"
    with out.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailgate.cli", "run", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None, out.read_text()
                time.sleep(0.2)
        yield port, out.read_text().splitlines()
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.nodb
def test_run_on_another_port_shows_that_ports_redirect_url(running: tuple[int, list[str]]) -> None:
    port, lines = running
    base = f"http://127.0.0.1:{port}"
    assert (
        f"  Outlook OAuth Authentication: register the redirect URL {base}/oauth/microsoft/callback"
        in lines
    )
    with httpx.Client(base_url=base, timeout=10, follow_redirects=True) as client:
        login = client.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
        assert token is not None
        client.post(
            "/accounts/login/",
            data={
                "username": "admin@example.com",
                "password": PASSWORD,
                "csrfmiddlewaretoken": token[1],
            },
        )
        form = client.get("/settings/technical/mail-servers/add/?auth=outlook").text
    assert f'id="id_redirect_url" value="{base}/oauth/microsoft/callback"' in form
    assert "origin-warning" not in form


def test_listen_url_maps_wildcards_and_brackets_ipv6() -> None:
    assert listen_url("127.0.0.1", 18080) == "http://127.0.0.1:18080"
    assert listen_url("0.0.0.0", 80) == "http://127.0.0.1:80"
    assert listen_url("::1", 8000) == "http://[::1]:8000"


def test_the_form_the_dashboard_and_doctor_warn_when_opened_elsewhere(
    admin_client: Client, settings: object
) -> None:
    settings.MAILGATE_PUBLIC_URL = "http://127.0.0.1:8000"  # type: ignore[attr-defined]
    config = settings.CONFIG  # type: ignore[attr-defined]
    settings.CONFIG = dataclasses.replace(config, public_url_explicit=True)  # type: ignore[attr-defined]
    cache.clear()
    form = admin_client.get(
        "/settings/technical/mail-servers/add/?auth=gmail", HTTP_HOST="127.0.0.1:18080"
    ).content.decode()
    assert 'id="origin-warning"' in form
    assert "This console was opened at http://127.0.0.1:18080, but MAILGATE_PUBLIC_URL is" in form
    assert "must have exactly that redirect URL" in form
    assert "http://127.0.0.1:8000/oauth/google/callback" in form
    dashboard = admin_client.get("/", HTTP_HOST="127.0.0.1:18080").content.decode()
    assert "The console is opened at another address than MAILGATE_PUBLIC_URL" in dashboard
    # doctor sees no browser: it reads the address the console was last opened at.
    titles = [f.title for f in system_findings()]
    assert "The console is opened at another address than MAILGATE_PUBLIC_URL" in titles
    # Opened at the right address, the warnings go.
    admin_client.get("/", HTTP_HOST="127.0.0.1:8000")
    assert "public_url_origin" not in [f.check for f in system_findings()]


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("host", "explicit", "warned"),
    [
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("0.0.0.0", True, False),
        ("127.0.0.1", False, False),
    ],
)
def test_listening_everywhere_without_a_public_url_says_what_to_set(
    settings: pytest.FixtureRequest, host: str, explicit: bool, warned: bool
) -> None:
    from django.conf import settings as live

    from mailgate.console.serve import wildcard_warning, wildcard_without_public_url

    settings.CONFIG = dataclasses.replace(live.CONFIG, public_url_explicit=explicit)  # type: ignore[attr-defined]
    assert wildcard_without_public_url(host) is warned
    text = wildcard_warning(8025)
    assert "http://127.0.0.1:8025/" in text and "MAILGATE_PUBLIC_URL=" in text
    assert "400 Bad Request" in text
