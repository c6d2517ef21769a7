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


def demo_command(base: int, state: Path) -> list[str]:
    return [
        sys.executable, "-m", "mailgate.cli", "demo", "--port-base", str(base), "--state", str(state)
    ]  # fmt: skip


def _start_demo(
    tmp_path: Path, deadline: float
) -> tuple[subprocess.Popen[str], list[str], int, int, Path]:
    """Start `mailgate demo` and read its banner; a port taken meanwhile by a parallel test is
    retried on other ports (three tries), any other early exit fails with the demo's stderr."""
    for attempt in range(3):
        base, port = _free_port_base(), _free_port()
        while base <= port <= base + 4:
            port = _free_port()
        state = tmp_path / f"demo{attempt}"
        errors = tmp_path / f"demo{attempt}.err"
        with errors.open("w") as stderr:
            process = subprocess.Popen(
                [*demo_command(base, state), "--port", str(port)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        lines: list[str] = []
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl+C"):
                return process, lines, base, port, state
        process.wait(timeout=60)
        stderr_text = errors.read_text()
        if "cannot listen on ports" in stderr_text:
            continue
        raise AssertionError(f"demo exited early ({process.returncode}):\n{stderr_text[-3000:]}")
    raise AssertionError("three port ranges were taken while the demo started")


def test_the_demo_runs_mailgate_against_the_sandbox(tmp_path: Path) -> None:
    deadline = time.monotonic() + 120
    process, lines, base, port, state = _start_demo(tmp_path, deadline)
    try:
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


def test_a_port_taken_by_dovecot_s_listener_is_a_clear_error(tmp_path: Path) -> None:
    """Dovecot failing to listen is reported like the sandbox's own ports: no traceback."""
    base = _free_port_base()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 2))
        taken.listen()
        result = subprocess.run(
            demo_command(base, tmp_path / "demo"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert f"cannot listen on ports {base}-{base + 4}" in result.stderr, result.stderr
    assert "use --port-base N" in result.stderr
    assert "Traceback" not in result.stderr
