"""`mailgate servers add` / `mailgate fetch` / `mailgate worker` as real processes on a database of
their own: exit codes, the printed counts, and kill -9 between the commit and the server's flags."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.inbox.conftest import PASSWORD, Mailbox, PasswordDovecot, message
from tests.outbox.own_database import ROOT, own_database, process_env, query


class Deployment:
    def __init__(self, url: str, home: Path, dovecot: PasswordDovecot) -> None:
        self.url = url
        self.home = home
        self.env = process_env(url, home, SSL_CERT_FILE=str(dovecot.ca.ca_file))
        self.dovecot = dovecot

    def mailgate(
        self, *args: str, stdin: str = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailgate.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            cwd=ROOT,
            timeout=120,
        )

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "mailgate.cli", *args],
            env={**self.env, **(env or {})},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def add_server(self, name: str, mailbox: Mailbox, *flags: str, protocol: str = "imap") -> None:
        port = self.dovecot.imap_port if protocol == "imap" else self.dovecot.pop3_port
        done = self.mailgate(
            "servers", "add", "--name", name, "--auth", "password",
            "--username", mailbox.user, "--password-stdin",
            "--incoming", protocol, "--incoming-host", "127.0.0.1",
            "--incoming-port", str(port), "--incoming-security", "ssl", *flags,
            stdin=PASSWORD,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def count(self, sql: str = "SELECT COUNT(*) FROM inbox_incomingmessage") -> int:
        return int(query(self.url, sql)[0][0])


@pytest.fixture(params=["sqlite", "postgresql"])
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, password_dovecot: PasswordDovecot
) -> Iterator[Deployment]:
    with own_database(request.param, tmp_path, "mg_inbox_procs") as url:
        deployed = Deployment(url, tmp_path, password_dovecot)
        done = deployed.mailgate("migrate", "--no-input")
        assert done.returncode == 0, done.stderr
        yield deployed


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_kill_9_between_store_and_flag_loses_nothing_and_stores_nothing_twice(
    deployment: Deployment, mailbox: Mailbox
) -> None:
    mailbox.create("Done")
    deployment.add_server(
        "orders", mailbox, "--fetch-existing", "--after-fetch", "move", "--move-to-folder", "Done"
    )
    for i in range(6):
        mailbox.append(message(f"order {i}"))
    process = deployment.start(
        "fetch", env={"MAILGATE_INBOX_PAUSE_AFTER_STORE": "60", "MAILGATE_INBOX_BATCH": "4"}
    )
    try:
        wait_for(lambda: deployment.count() == 4, 60, "the first batch to be committed")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    except AssertionError as exc:
        process.kill()
        raise AssertionError(
            f"{exc}; the fetch printed: {process.communicate()[1][-3000:]}"
        ) from None
    finally:
        if process.poll() is None:
            process.kill()
    # Stored, and the server was told nothing yet.
    assert mailbox.count("INBOX") == 6 and mailbox.count("Done") == 0
    done = deployment.mailgate("fetch")
    assert done.returncode == 0, done.stderr
    assert "orders INBOX: 2 new messages" in done.stdout
    assert deployment.count() == 6
    subjects = {r[0] for r in query(deployment.url, "SELECT subject FROM inbox_incomingmessage")}
    assert subjects == {f"order {i}" for i in range(6)}
    assert mailbox.count("INBOX") == 0 and mailbox.count("Done") == 6
    pending = "SELECT COUNT(*) FROM inbox_incomingmessage WHERE remote_action = 'pending'"
    assert deployment.count(pending) == 0


def test_fetch_exits_1_when_a_server_fails_and_names_it(
    deployment: Deployment, mailbox: Mailbox, password_dovecot: PasswordDovecot
) -> None:
    deployment.add_server("good", mailbox, "--folder", "INBOX", "--poll-interval", "30")
    done = deployment.mailgate(
        "servers", "add", "--name", "refused", "--auth", "password", "--username",
        "nobody@example.test", "--password-stdin", "--incoming", "imap", "--incoming-host",
        "127.0.0.1", "--incoming-port", str(password_dovecot.imap_port),
        stdin="wrong",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    mailbox.append(message("hello"))
    done = deployment.mailgate("fetch", "--server", "good")
    assert (done.returncode, done.stdout.strip()) == (0, "good INBOX: 0 new messages")
    mailbox.append(message("second"))
    done = deployment.mailgate("fetch")
    assert done.returncode == 1
    assert "good INBOX: 1 new message" in done.stdout
    assert "refused: failed: authentication failed" in done.stderr
    done = deployment.mailgate("fetch", "--server", "missing")
    assert done.returncode == 2 and "--server: no mail server named 'missing'" in done.stderr


def test_the_worker_polls_on_the_interval(deployment: Deployment, mailbox: Mailbox) -> None:
    deployment.add_server("polled", mailbox, "--poll-interval", "1")
    worker = deployment.start("worker")
    try:
        wait_for(
            lambda: deployment.count("SELECT COUNT(*) FROM inbox_foldercursor") == 1,
            60,
            "the first fetch",
        )
        mailbox.append(message("polled in"))
        wait_for(lambda: deployment.count() == 1, 30, "the worker to fetch the new message")
        status = "SELECT status FROM inbox_incomingmessage"
        wait_for(lambda: query(deployment.url, status)[0][0] == "delivered", 30, "the hand-off")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
