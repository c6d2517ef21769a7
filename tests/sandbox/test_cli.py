"""`mailgate sandbox` as a user runs it: a real process, its printed settings, ctl, and a clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.sandbox_fixtures import ca_context

pytestmark = pytest.mark.nodb


def _free_port_base() -> int:
    """N such that N..N+4 are free on 127.0.0.1 (bounded attempts)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base > 65000:
            continue
        sockets = []
        try:
            for port in range(base, base + 5):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no five consecutive free ports found")


def _mailgate(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailgate.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,  # type: ignore[call-overload]
    )


def test_the_sandbox_prints_the_settings_serves_them_and_stops_on_sigint(tmp_path: Path) -> None:
    base = _free_port_base()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailgate.cli",
            "sandbox",
            "--port-base",
            str(base),
            "--state",
            str(tmp_path / "state"),
            "--no-dovecot",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl+C"):
                break
        output = "\n".join(lines)
        assert f"export MAILGATE_MICROSOFT_LOGIN_URL=https://127.0.0.1:{base + 4}" in output
        assert (
            f"export MAILGATE_GOOGLE_AUTH_URL=https://127.0.0.1:{base + 4}/o/oauth2/v2/auth"
            in output
        )
        assert f"export MAILGATE_GOOGLE_TOKEN_URL=https://127.0.0.1:{base + 4}/token" in output
        assert f"export SSL_CERT_FILE={tmp_path / 'state' / 'tls' / 'ca.pem'}" in output
        assert f"export MAILGATE_SANDBOX_SMTP=127.0.0.1:{base + 1}" in output
        assert f"export MAILGATE_SANDBOX_IMAP=127.0.0.1:{base + 2}" in output
        assert f"export MAILGATE_SANDBOX_POP3=127.0.0.1:{base + 3}" in output
        assert "Demo tenant: Contoso, tenant ID" in output
        assert "User: alex@contoso.example, password " in output
        assert "client secret value " in output
        discovery = httpx.get(
            f"https://127.0.0.1:{base + 4}/contoso.example/v2.0/.well-known/openid-configuration",
            verify=ca_context(tmp_path / "state" / "tls" / "ca.pem"),
        )
        assert discovery.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{base}/common/discovery/v2.0/keys").json()["keys"]
        ctl = _mailgate("sandbox", "--port-base", str(base), "ctl", "set_faults", "fail=503")
        assert ctl.returncode == 0, ctl.stderr
        assert '"fail": 503' in ctl.stdout
        bad = _mailgate("sandbox", "--port-base", str(base), "ctl", "set_faults", "fail=418")
        assert bad.returncode == 2
        assert "fail: must be 500, 503 or null" in bad.stderr
        with socket.create_connection(("127.0.0.1", base + 1), timeout=5) as smtp:
            assert smtp.recv(100).startswith(b"220 ")
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "mailgate sandbox: stopped" in out


def test_a_non_loopback_host_is_refused() -> None:
    result = _mailgate("sandbox", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "--host 0.0.0.0 is not a loopback address" in result.stderr


def test_a_bad_port_base_is_refused() -> None:
    result = _mailgate("sandbox", "--port-base", "80")
    assert result.returncode == 2
    assert "--port-base must be between 1024 and 65531" in result.stderr


def test_ctl_without_a_running_sandbox_explains(tmp_path: Path) -> None:
    base = _free_port_base()
    result = _mailgate("sandbox", "--port-base", str(base), "ctl", "counters")
    assert result.returncode == 1
    assert "is it running?" in result.stderr


def test_a_port_in_use_is_reported_with_the_fix(tmp_path: Path) -> None:
    base = _free_port_base()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base))
        busy.listen()
        result = _mailgate(
            "sandbox",
            "--port-base",
            str(base),
            "--state",
            str(tmp_path),
            "--no-dovecot",
            env={**os.environ},
        )
    assert result.returncode == 1
    assert "choose free ports with --port-base N" in result.stderr
