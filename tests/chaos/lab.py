"""A deployment under test: a database of its own, `mailgate worker` / `web` processes, a way in.

Everything is real: the processes are `python -m mailgate.cli worker|web` on a SQLite file or a
PostgreSQL database of their own, mail goes to an SMTP server on loopback (tests/smtpsink.py or
the sandbox's Exchange-like server), and the faults are done to them from outside.
"""

from __future__ import annotations

import collections
import contextlib
import email
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from tests.outbox.own_database import ROOT, own_database, process_env, query
from tests.smtpsink import SMTPSink

# Short back-off, so that what is measured is mailgate's recovery, not the configured pauses.
# The sink's Concurrent Connections (the default of a new server): one worker sends over 3 on
# PostgreSQL, over 1 on SQLite (one writer at a time).
CONNECTIONS = 3


def in_flight(kind: str) -> int:
    """Messages one worker has in flight at once: one per connection it sends over."""
    return CONNECTIONS if kind == "postgresql" else 1


FAST_RETRIES = {"MAILGATE_OUTBOX_BACKOFF_BASE": "0.5", "MAILGATE_OUTBOX_BACKOFF_MAX": "2"}


@dataclass
class Row:
    """One line of the fault matrix."""

    fault: str
    database: str
    messages: int
    lost: int
    duplicated: int
    recovery: float | None  # seconds from the end of the fault to the next delivery
    drained: float | None = None  # seconds from the end of the fault to the last delivery
    note: str = ""
    crashes: int = 1  # duplicates allowed: at most one per crash and connection in flight
    within_bound: bool = True  # the row's own bound (e.g. the longest wait) was kept
    # Messages in flight at a crash: one per connection the worker sends over side by side (a
    # fault to one connection, such as a drop after its data, has one).
    in_flight: int = 1

    @property
    def allowed_duplicates(self) -> int:
        return self.crashes * self.in_flight

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated <= self.allowed_duplicates and self.within_bound


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took until `condition()` held; AssertionError after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def message_ids(sink: SMTPSink) -> collections.Counter[str]:
    with sink.lock:
        return collections.Counter(
            str(email.message_from_bytes(r.data)["Message-ID"]) for r in sink.received
        )


@dataclass
class Lab:
    kind: str  # "sqlite" or "postgresql"
    url: str
    home: Path
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- set-up ------------------------------------------------------------------------------

    def harness(self, command: str, argument: dict | None = None) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "tests.outbox.harness", command, json.dumps(argument or {})],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def python(self, code: str, timeout: float = 120) -> str:
        """Run `code` in a process with Django set up on this deployment; its output."""
        done = subprocess.run(
            [sys.executable, "-c", "import django; django.setup()\n" + code],
            env={**self.env, "DJANGO_SETTINGS_MODULE": "mailgate.settings"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def api_key(self) -> str:
        return self.python(
            "from mailgate.api.models import APIKey\n"
            "import uuid\nprint(APIKey.issue('chaos-' + uuid.uuid4().hex[:6])[1])"
        ).strip()

    # -- processes ---------------------------------------------------------------------------

    def start(self, *command: str, **env: str) -> subprocess.Popen[bytes]:
        # CHAOS_LOGS=DIR keeps each process's log there (web-1.log, worker-2.log, ...).
        logs = os.environ.get("CHAOS_LOGS")
        log: IO[bytes] | int = subprocess.DEVNULL
        if logs:
            Path(logs).mkdir(parents=True, exist_ok=True)
            log = open(Path(logs) / f"{command[0]}-{len(self.processes) + 1}.log", "ab")  # noqa: SIM115
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "mailgate.cli", *command],
                env={**self.env, **env},
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )
        finally:
            if not isinstance(log, int):
                log.close()  # the child has its own copy
        self.processes.append(process)
        return process

    def worker(self, **env: str) -> subprocess.Popen[bytes]:
        return self.start("worker", **env)

    def web(self, port: int) -> subprocess.Popen[bytes]:
        process = self.start("web", "--port", str(port))
        wait_for(lambda: _answers(port), 60, "the web process to answer")
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        self.processes.clear()

    # -- the queue, read directly ------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        rows = query(
            self.url, "SELECT status, COUNT(*) FROM outbox_outgoingmessage GROUP BY status"
        )
        return {status: int(n) for status, n in rows}

    def all_sent(self, total: int) -> bool:
        return self.counts() == {"sent": total}

    def drained_since(self, since: float, total: int, timeout: float = 120) -> float:
        """Seconds from `since` (time.monotonic()) until all `total` messages were sent."""
        wait_for(lambda: self.all_sent(total), timeout, f"all {total} messages sent")
        return time.monotonic() - since

    def queued_ids(self) -> set[str]:
        return {r[0] for r in query(self.url, "SELECT message_id FROM outbox_outgoingmessage")}

    def claimed(self) -> int:
        sql = "SELECT COUNT(*) FROM outbox_outgoingmessage WHERE claimed_by <> ''"
        return int(query(self.url, sql)[0][0])


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def lab(kind: str, home: Path, **env: str) -> Iterator[Lab]:
    with own_database(kind, home, "mg_chaos") as url:
        deployed = Lab(kind, url, home, process_env(url, home, **FAST_RETRIES, **env))
        deployed.harness("migrate")
        try:
            yield deployed
        finally:
            deployed.stop_all()


def sink_server(sink: SMTPSink, **extra: object) -> dict:
    return {
        "name": "sink",
        "auth_method": "password",
        "smtp_host": "127.0.0.1",
        "smtp_port": sink.port,
        "smtp_security": "none",
        "limit_per_minute": 1_000_000,
        "limit_connections": CONNECTIONS,
        **extra,
    }


def tally(expected: set[str], delivered: collections.Counter[str]) -> tuple[int, int]:
    """(lost, duplicated): expected Message-IDs never delivered, and extra deliveries."""
    lost = len(expected - set(delivered))
    duplicated = sum(n - 1 for n in delivered.values())
    return lost, duplicated
