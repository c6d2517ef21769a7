"""`mailgate relay` as a process of its own: killed with SIGKILL right after it answered 250, it
has lost nothing (the row was committed before the answer) and the worker delivers it once."""

from __future__ import annotations

import email
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.outbox.own_database import ROOT, own_database, process_env, query
from tests.peers.postfix import wait_until
from tests.smtpsink import SMTPSink

pytestmark = [
    pytest.mark.nodb,
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

SENDER = "erp@contoso.example"


def mailgate(env: dict[str, str], *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mailgate.cli", *args],
        env=env,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def sink() -> Iterator[SMTPSink]:
    with SMTPSink(users={"app@contoso.example": "relay-pass"}) as running:
        yield running


@pytest.fixture(params=["sqlite", "postgresql"])
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, sink: SMTPSink
) -> Iterator[tuple[dict[str, str], str, str]]:
    """A database with a password server (the sink) and a send key; the env, URL and key."""
    with own_database(request.param, tmp_path, "mailgate_relay") as url:
        env = process_env(url, tmp_path)
        mailgate(env, "migrate", "--verbosity", "0")
        mailgate(
            env,
            "servers", "add", "--name", "Office relay", "--auth", "password",
            "--username", "app@contoso.example", "--password-stdin",
            "--smtp-host", "127.0.0.1", "--smtp-port", str(sink.port), "--security", "none",
            "--from-filter", SENDER,
            stdin="relay-pass\n",
        )  # fmt: skip
        key = mailgate(env, "apikeys", "create", "--name", "erp", "--scope", "send")
        yield env, url, key.strip().splitlines()[-1]


def start_relay(env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    relay = subprocess.Popen(
        [sys.executable, "-m", "mailgate.cli", "relay", "--listen", "127.0.0.1:0"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert relay.stdout is not None
    line = relay.stdout.readline()  # "mailgate: SMTP relay on smtp://127.0.0.1:<port> (STARTTLS)"
    assert "SMTP relay on smtp://127.0.0.1:" in line, line
    return relay, int(line.split("127.0.0.1:")[1].split()[0])


def test_a_relay_killed_right_after_250_loses_nothing(
    deployment: tuple[dict[str, str], str, str], sink: SMTPSink, tmp_path: Path
) -> None:
    env, url, key = deployment
    relay, port = start_relay(env)
    try:
        client = smtplib.SMTP("localhost", port, timeout=30)
        # The certificate the relay made for itself, kept in MAILGATE_HOME.
        context = ssl.create_default_context(cafile=str(tmp_path / "smtp-tls-cert.pem"))
        client.starttls(context=context)
        client.login("erp", key)
        message = EmailMessage()
        message["From"] = SENDER
        message["To"] = "ann@example.org"
        message["Subject"] = "Kill me"
        message.set_content("Accepted means kept.\n")
        client.send_message(message)  # returns on the 250
        os.kill(relay.pid, signal.SIGKILL)
        relay.wait(timeout=10)
        client.close()
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait(timeout=10)
    rows = query(url, "SELECT status, source FROM outbox_outgoingmessage")
    assert rows == [("queued", "smtp")]
    mailgate(env, "worker", "--once")
    (received,) = sink.received
    assert email.message_from_bytes(received.data)["Subject"] == "Kill me"
    assert query(url, "SELECT status FROM outbox_outgoingmessage") == [("sent",)]


def test_mailgate_relay_without_a_listener_says_what_to_set(tmp_path: Path) -> None:
    env = {k: v for k, v in process_env("", tmp_path).items() if k != "MAILGATE_DATABASE_URL"}
    env.pop("MAILGATE_SMTP_LISTEN", None)
    migrated = subprocess.run(
        [sys.executable, "-m", "mailgate.cli", "migrate", "--verbosity", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated.stderr
    done = subprocess.run(
        [sys.executable, "-m", "mailgate.cli", "relay"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "MAILGATE_SMTP_LISTEN is not set" in done.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("deployment", ["sqlite"], indirect=True)
def test_mailgate_run_starts_the_relay_when_smtp_listen_is_set(
    deployment: tuple[dict[str, str], str, str], sink: SMTPSink
) -> None:
    env, url, key = deployment
    port = free_port()
    env = {**env, "MAILGATE_SMTP_LISTEN": f"127.0.0.1:{port}"}
    run = subprocess.Popen(
        [sys.executable, "-m", "mailgate.cli", "run", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert run.stdout is not None
        announced = f"mailgate: SMTP relay on smtp://127.0.0.1:{port} (STARTTLS)\n"
        lines = []
        while announced not in lines and len(lines) < 10:  # after the first administrator's lines
            lines.append(run.stdout.readline())
        assert announced in lines, lines
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.login("erp", key)  # plain login is allowed from this machine (loopback)
            client.sendmail(SENDER, ["ann@example.org"], b"From: erp@contoso.example\r\n"
                            b"To: ann@example.org\r\nSubject: Via run\r\n\r\nHello.\r\n")  # fmt: skip
        assert wait_until(lambda: len(sink.received) == 1, 60)
        assert wait_until(
            lambda: query(url, "SELECT status FROM outbox_outgoingmessage") == [("sent",)], 30
        )
    finally:
        run.terminate()
        run.wait(timeout=30)
