"""IMAP IDLE: new mail makes the server due at once, against a real Dovecot."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from mailgate.core.models import WorkerHeartbeat
from mailgate.inbox.fetcher import fetch_server
from mailgate.inbox.idle import (
    IdleWatcher,
    claim_idle,
    idle_holder,
    keep_watchers,
    lease_for,
    renew_idle,
)
from mailgate.inbox.models import FetchState
from tests.inbox.conftest import Mailbox, PasswordDovecot, make_server, message


@pytest.mark.django_db(transaction=True)
def test_new_mail_wakes_the_fetch_within_seconds(
    password_dovecot: PasswordDovecot, mailbox: Mailbox, trust: None, inbox_home: Path
) -> None:
    server = make_server(password_dovecot, mailbox, idle=True, poll_interval=3600)
    assert fetch_server(server).ok
    state = FetchState.objects.get(pk=server.pk)
    assert state.next_fetch_at is not None and state.last_fetch_at is not None
    assert (state.next_fetch_at - state.last_fetch_at).total_seconds() > 3000
    stop = threading.Event()
    watcher = IdleWatcher(server.pk, stop, idle_seconds=2)
    watcher.start()
    try:
        time.sleep(0.5)  # the watcher's IDLE is under way
        mailbox.append(message("instant"))
        deadline = time.monotonic() + 20
        while watcher.wakeups == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.wakeups >= 1
        state.refresh_from_db()
        assert state.next_fetch_at is not None and state.next_fetch_at <= timezone.now()
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert not watcher.is_alive()
    assert fetch_server(server, due_only=True).counts == {"INBOX": 1}


@pytest.mark.django_db(transaction=True)
def test_the_watcher_ends_when_idle_is_switched_off(
    password_dovecot: PasswordDovecot, mailbox: Mailbox, trust: None, inbox_home: Path
) -> None:
    server = make_server(password_dovecot, mailbox, idle=False)
    watcher = IdleWatcher(server.pk, threading.Event(), idle_seconds=1)
    watcher.start()
    watcher.join(timeout=10)
    assert not watcher.is_alive() and watcher.wakeups == 0


@pytest.mark.django_db(transaction=True)
def test_a_database_busy_at_the_claim_does_not_end_the_watcher(
    password_dovecot: PasswordDovecot,
    mailbox: Mailbox,
    trust: None,
    inbox_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lock error when the lease is taken (SQLite under load) is retried, not fatal."""
    from django.db import OperationalError

    from mailgate.inbox import idle

    server = make_server(password_dovecot, mailbox, idle=True, poll_interval=3600)
    tries: list[int] = []

    def busy_once(server_id: int, holder: str, lease: dt.timedelta) -> bool:
        tries.append(server_id)
        if len(tries) == 1:
            raise OperationalError("database table is locked: inbox_fetchstate")
        return claim_idle(server_id, holder, lease)

    monkeypatch.setattr(idle, "claim_idle", busy_once)
    stop = threading.Event()
    watcher = IdleWatcher(server.pk, stop, idle_seconds=2, holder="test-host:1:busy")
    watcher.start()
    try:
        assert wait_until(lambda: idle_holder(server.pk) == "test-host:1:busy")
        mailbox.append(message("after a busy moment"))
        assert wait_until(lambda: watcher.wakeups >= 1)
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert not watcher.is_alive() and len(tries) == 2
    assert idle_holder(server.pk) == ""


def imap_connections(port: int) -> int:
    """Established TCP connections to `port` on this machine (the IDLE connections held)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01":  # 01: ESTABLISHED
                count += 1
    return count


def wait_until(check: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


WORKER_A = "worker-a.example:101:aaaa"
WORKER_B = "worker-b.example:202:bbbb"


@pytest.mark.django_db(transaction=True)
def test_two_workers_hold_one_idle_connection_and_the_second_takes_over(
    password_dovecot: PasswordDovecot, mailbox: Mailbox, trust: None, inbox_home: Path
) -> None:
    server = make_server(password_dovecot, mailbox, idle=True, poll_interval=3600)
    assert fetch_server(server).ok
    port = password_dovecot.imap_port
    assert wait_until(lambda: imap_connections(port) == 0)
    stop_a, stop_b = threading.Event(), threading.Event()
    running_a: dict[int, IdleWatcher] = {}
    running_b: dict[int, IdleWatcher] = {}

    def step(stop: threading.Event, holder: str, running: dict[int, IdleWatcher]) -> list[Any]:
        return keep_watchers(stop, holder=holder, watchers=running, idle_seconds=2)

    try:
        started = step(stop_a, WORKER_A, running_a)
        assert len(started) == 1
        for _ in range(3):  # worker B's steps keep finding the lease taken
            assert step(stop_b, WORKER_B, running_b) == []
            assert step(stop_a, WORKER_A, running_a) == []  # A's watcher runs already
        assert idle_holder(server.pk) == WORKER_A
        assert wait_until(lambda: imap_connections(port) == 1)
        time.sleep(2.5)  # a renewal round: still one connection, still A's
        assert imap_connections(port) == 1 and idle_holder(server.pk) == WORKER_A
        mailbox.append(message("instant"))
        assert wait_until(lambda: started[0].wakeups >= 1)

        # Worker A stops: its watcher gives the lease back and B's next step takes over.
        stop_a.set()
        started[0].join(timeout=30)
        assert not started[0].is_alive() and idle_holder(server.pk) == ""
        taken = step(stop_b, WORKER_B, running_b)
        assert len(taken) == 1 and idle_holder(server.pk) == WORKER_B
        assert wait_until(lambda: imap_connections(port) == 1)
        mailbox.append(message("after the takeover"))
        assert wait_until(lambda: taken[0].wakeups >= 1)
    finally:
        stop_a.set()
        stop_b.set()
        for watcher in [*running_a.values(), *running_b.values()]:
            watcher.join(timeout=30)
    assert idle_holder(server.pk) == ""
    assert fetch_server(server, due_only=True).counts == {"INBOX": 2}


@pytest.mark.django_db
def test_a_dead_workers_idle_lease_is_taken_over_and_a_live_ones_is_not(
    password_dovecot: PasswordDovecot, mailbox: Mailbox, trust: None, inbox_home: Path
) -> None:
    server = make_server(password_dovecot, mailbox, idle=True)
    lease = lease_for(120)
    assert claim_idle(server.pk, WORKER_A, lease)
    assert not claim_idle(server.pk, WORKER_B, lease)
    assert claim_idle(server.pk, WORKER_A, lease)  # the holder keeps it
    # A's lease ran out without renewal (its worker hung or vanished): B takes it.
    FetchState.objects.filter(pk=server.pk).update(
        idle_until=timezone.now() - dt.timedelta(seconds=1)
    )
    assert claim_idle(server.pk, WORKER_B, lease)
    assert not renew_idle(server.pk, WORKER_A, lease)  # A's watcher would stop on its next round
    # B's heartbeat stops (dead after MAILGATE_WORKER_DEAD_SECONDS): A takes over at once,
    # without waiting for B's lease to run out.
    now = timezone.now()
    WorkerHeartbeat.objects.create(
        holder=WORKER_B,
        hostname="worker-b.example",
        pid=202,
        started_at=now - dt.timedelta(minutes=5),
        last_seen_at=now - dt.timedelta(minutes=2),
    )
    assert claim_idle(server.pk, WORKER_A, lease)
    assert idle_holder(server.pk) == WORKER_A
