"""Real worker processes against real databases (a SQLite file and a PostgreSQL database of their own)."""

from __future__ import annotations

import collections
import email
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.outbox.own_database import ROOT, own_database, process_env, query
from tests.smtpsink import SMTPSink

pytestmark = pytest.mark.nodb


class Deployment:
    """A database plus worker processes pointed at it."""

    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.home = home
        self.env = process_env(url, home, MAILGATE_OUTBOX_LEASE_SECONDS="3")
        self.workers: list[subprocess.Popen[bytes]] = []

    def harness(self, command: str, argument: dict | None = None) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "tests.outbox.harness", command, json.dumps(argument or {})],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def _query(self, sql: str) -> list[tuple]:
        return query(self.url, sql)

    def status(self) -> dict:
        """The queue as the database has it, read directly (a cheap query, no Django start-up)."""
        table = "outbox_outgoingmessage"
        return {
            "counts": dict(self._query(f"SELECT status, COUNT(*) FROM {table} GROUP BY status")),
            "message_ids": [r[0] for r in self._query(f"SELECT message_id FROM {table}")],
            "claimed": self._query(f"SELECT COUNT(*) FROM {table} WHERE claimed_by <> ''")[0][0],
            "throttled": self._query(
                "SELECT COUNT(*) FROM outbox_serverstate WHERE next_allowed_at IS NOT NULL"
            )[0][0],
        }

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        # Its log goes to a file: a pipe nobody reads fills up (a line per message sent) and then
        # blocks the worker at its next log line.
        log = self.home / f"worker-{len(self.workers)}-{time.monotonic_ns()}.log"
        with open(log, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "mailgate.cli", "worker"],
                env={**self.env, **env},
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.workers.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        self.workers.clear()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def deployment(request, tmp_path_factory) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp(f"workers-{request.param}")
    with own_database(request.param, home, "mg_outbox_procs") as url:
        deployed = Deployment(url, home)
        deployed.harness("migrate")
        yield deployed
        deployed.stop_all()


@pytest.fixture
def fresh(deployment: Deployment) -> Iterator[Deployment]:
    deployment.harness("reset")
    yield deployment
    deployment.stop_all()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def server_fields(sink: SMTPSink, **extra: object) -> dict:
    return {
        "name": "sink",
        "auth_method": "password",
        "smtp_host": "127.0.0.1",
        "smtp_port": sink.port,
        "smtp_security": "none",
        "limit_per_minute": 100_000,
        **extra,
    }


def received_ids(sink: SMTPSink) -> collections.Counter[str]:
    with sink.lock:
        return collections.Counter(
            str(email.message_from_bytes(r.data)["Message-ID"]) for r in sink.received
        )


def test_four_workers_drain_a_thousand_messages_with_no_duplicate_and_no_loss(fresh):
    # 1,000 on PostgreSQL (the scale-out database); SQLite, one writer at a time, gets 300.
    total = 1000 if fresh.url.startswith("postgresql") else 300
    with SMTPSink() as sink:
        fresh.harness(
            "setup", {"server": server_fields(sink, limit_connections=4), "messages": total}
        )
        for _ in range(4):
            fresh.start_worker()
        wait_for(lambda: len(sink.received) >= total, 240, f"{total} deliveries")
        status = fresh.status()
        wait_for(lambda: fresh.status()["counts"] == {"sent": total}, 30, "all rows sent")
        ids = received_ids(sink)
        assert set(ids) == set(status["message_ids"])
        assert max(ids.values()) == 1, [m for m, n in ids.items() if n > 1]
        assert sink.max_active <= 4


def test_limits_hold_across_two_worker_processes(fresh):
    with SMTPSink() as sink:
        fresh.harness(
            "setup",
            {
                "server": server_fields(sink, limit_per_minute=12, limit_connections=1),
                "messages": 40,
            },
        )
        fresh.start_worker()
        fresh.start_worker()
        wait_for(lambda: len(sink.received) >= 12, 60, "the first minute's 12 messages")
        wait_for(lambda: fresh.status()["throttled"] == 1, 30, "the server to be paused")
        settle = time.monotonic() + 2
        wait_for(lambda: time.monotonic() > settle, 5, "both workers to pass the limit again")
        assert len(sink.received) == 12
        assert sink.max_active == 1
        assert fresh.status()["counts"]["queued"] == 28


def sink_for(mode: str) -> SMTPSink:
    """Command by command ("steps") or as the worker talks to Exchange and Postfix ("bdat":
    PIPELINING and CHUNKING); handle_DATA (end of DATA, BDAT LAST) waits 10 ms either way."""
    return SMTPSink(
        data_delay=0.01, pipelining=mode == "bdat", chunking="yes" if mode == "bdat" else ""
    )


@pytest.mark.parametrize("connections", [1, 3])
@pytest.mark.parametrize("mode", ["steps", "bdat"])
def test_a_worker_killed_mid_batch_loses_nothing_and_resends_at_most_the_one_in_flight(
    fresh, mode, connections
):
    """At most one message per connection is in flight: one worker sends over the server's
    Concurrent Connections side by side, so a kill -9 may resend one message per connection."""
    with sink_for(mode) as sink:
        fresh.harness(
            "setup",
            {"server": server_fields(sink, limit_connections=connections), "messages": 150},
        )
        victim = fresh.start_worker()
        wait_for(lambda: len(sink.received) >= 40, 60, "some deliveries")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        before = fresh.status()
        assert before["claimed"] > 0  # the dead worker's claims are still there
        fresh.start_worker()
        wait_for(lambda: fresh.status()["counts"] == {"sent": 150}, 120, "all 150 sent")
        ids = received_ids(sink)
        assert set(ids) == set(before["message_ids"])
        # On SQLite a worker sends over one connection (one writer at a time).
        used = connections if fresh.url.startswith("postgresql") else 1
        assert sum(n - 1 for n in ids.values()) <= used
        assert sink.max_active == used  # the one worker did use them all


@pytest.mark.parametrize("mode", ["steps", "bdat"])
def test_sigterm_finishes_the_current_message_and_releases_the_claims(fresh, mode):
    with sink_for(mode) as sink:
        fresh.harness("setup", {"server": server_fields(sink), "messages": 150})
        worker = fresh.start_worker()
        wait_for(lambda: len(sink.received) >= 20, 60, "some deliveries")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        after = fresh.status()
        assert after["claimed"] == 0
        assert "sending" not in after["counts"]
        assert after["counts"]["sent"] == len(sink.received)
        fresh.start_worker()
        wait_for(lambda: fresh.status()["counts"] == {"sent": 150}, 120, "all 150 sent")
        assert max(received_ids(sink).values()) == 1


def test_after_a_kill_9_the_stranded_claims_are_delivered_again_within_a_minute(fresh):
    # The production lease (300 s): recovery comes from the dead worker's silent heartbeat
    # (MAILGATE_WORKER_DEAD_SECONDS, default 30 s), not from its lease running out.
    lease = {"MAILGATE_OUTBOX_LEASE_SECONDS": "300"}
    with SMTPSink(data_delay=0.05, pipelining=True, chunking="yes") as sink:
        fresh.harness("setup", {"server": server_fields(sink), "messages": 150})
        victim = fresh.start_worker(**lease)
        wait_for(lambda: len(sink.received) >= 20, 60, "some deliveries")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        killed_at = time.monotonic()
        stranded = fresh.status()["claimed"]
        assert stranded > 0
        delivered_before = len(sink.received)
        fresh.start_worker(**lease)
        wait_for(lambda: len(sink.received) > delivered_before, 60, "deliveries to resume")
        recovery = time.monotonic() - killed_at
        wait_for(lambda: fresh.status()["counts"] == {"sent": 150}, 60, "all 150 sent")
        ids = received_ids(sink)
        assert set(ids) == set(fresh.status()["message_ids"])
        # One per connection in flight: the worker sent over the server's 3 (a new server's) on
        # PostgreSQL, over 1 on SQLite.
        assert sum(n - 1 for n in ids.values()) <= (3 if fresh.url.startswith("postgresql") else 1)
        assert recovery < 60, f"{stranded} stranded claims were delivered again after {recovery} s"
