"""`mailgate demo` from a clean state: sandbox + `mailgate run`, demo servers created, then a clean stop."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.sandbox.test_cli import _free_port_base

pytestmark = pytest.mark.nodb


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_demo_runs_mailgate_against_the_sandbox(tmp_path: Path) -> None:
    base, port = _free_port_base(), _free_port()
    state = tmp_path / "demo"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailgate.cli",
            "demo",
            "--port-base",
            str(base),
            "--port",
            str(port),
            "--state",
            str(state),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl+C"):
                break
        output = "\n".join(lines)
        assert "Mail server 'Demo Outlook' created." in output, output
        assert "Mail server 'Demo Gmail' created." in output
        assert f"mailgate: http://127.0.0.1:{port}" in output
        healthy = False
        while time.monotonic() < deadline and not healthy:
            try:
                healthy = (
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
                )
            except httpx.TransportError:
                time.sleep(0.2)
        assert healthy, "mailgate run did not answer /healthz"
        snapshot = httpx.get(f"http://127.0.0.1:{base}/sandbox/control/snapshot").json()
        app = snapshot["apps"][snapshot["demo"]["client_id"]]
        assert f"http://127.0.0.1:{port}/oauth/microsoft/callback" in app["redirect_uris"]
        admin = json.loads((state / "demo-admin.json").read_text())
        assert f"password {admin['password']}" in output
        listed = subprocess.run(
            [sys.executable, "-m", "mailgate.cli", "servers", "list", "--json"],
            env={**os.environ, "MAILGATE_HOME": str(state / "mailgate-home")},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        outlook = next(s for s in json.loads(listed.stdout) if s["name"] == "Demo Outlook")
        # The banner's two lines for another terminal work as printed (the message waits, held,
        # until the account is connected).
        home = state / "mailgate-home"
        assert f"  export MAILGATE_HOME={home}" in lines
        send = next(line.strip() for line in lines if "mailgate send --from" in line)
        assert send.startswith(f"uv run mailgate send --from {snapshot['demo']['user']} ")
        sent = subprocess.run(
            [sys.executable, "-m", "mailgate.cli", *shlex.split(send)[3:]],
            env={**os.environ, "MAILGATE_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sent.returncode == 1, sent.stderr
        assert "connect your account" in sent.stdout + sent.stderr
        expires = dt.datetime.fromtimestamp(snapshot["demo"]["client_secret_expires_at"], dt.UTC)
        assert outlook["client_secret_expires_on"] == expires.date().isoformat()
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 0
