"""Fast recovery: the claims of a worker whose heartbeat stopped are released by any live worker."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import pytest
import time_machine
from django.test import override_settings

from mailgate.conf import SettingsError
from mailgate.core import heartbeat
from mailgate.core.heartbeat import Heartbeat, dead_after, keep_beating
from mailgate.core.models import WorkerHeartbeat
from mailgate.outbox import enqueue
from mailgate.outbox.claims import release_dead_workers_claims
from mailgate.outbox.connection_pool import ConnectionPool
from mailgate.outbox.models import ConnectionLease, OutgoingMessage, Status
from mailgate.servers.models import MailServer

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)


def _claimed_by(holder: str) -> OutgoingMessage:
    message = enqueue(from_address="app@example.com", to=["a@example.org"], text="x")
    OutgoingMessage.objects.filter(pk=message.pk).update(
        status=Status.SENDING, claimed_by=holder, claimed_until=NOW + dt.timedelta(minutes=5)
    )
    return message


def _seen(holder: str, seconds_ago: float) -> None:
    Heartbeat(holder=holder).beat(now=NOW - dt.timedelta(seconds=seconds_ago))


@time_machine.travel(NOW, tick=False)
def test_claims_of_a_worker_silent_for_30_s_are_released_at_once_and_others_kept(
    make_server: Callable[..., MailServer],
) -> None:
    server = make_server()
    _seen("dead:1:aaaa", 31)
    _seen("alive:2:bbbb", 12)
    _seen("long-gone:3:cccc", 301)  # its claims expired with their lease already
    dead, alive, unknown = (_claimed_by(h) for h in ("dead:1:aaaa", "alive:2:bbbb", "test:9"))
    # The worker's other connections (threads) claim under "<holder>/t<n>": covered by its beat.
    dead_lane, alive_lane = (_claimed_by(h) for h in ("dead:1:aaaa/t1", "alive:2:bbbb/t2"))
    lookalike = _claimed_by("dead:1:aaaab")  # another process whose name starts the same
    ConnectionLease.objects.create(server=server, holder="dead:1:aaaa", expires_at=NOW)
    ConnectionLease.objects.create(server=server, holder="dead:1:aaaa/t1", expires_at=NOW)
    ConnectionLease.objects.create(server=server, holder="alive:2:bbbb", expires_at=NOW)

    assert release_dead_workers_claims(NOW) == 2
    assert OutgoingMessage.objects.get(pk=dead_lane.pk).claimed_by == ""
    assert OutgoingMessage.objects.get(pk=alive_lane.pk).claimed_by == "alive:2:bbbb/t2"
    assert OutgoingMessage.objects.get(pk=lookalike.pk).claimed_by == "dead:1:aaaab"

    released = OutgoingMessage.objects.get(pk=dead.pk)
    assert (released.status, released.claimed_by, released.claimed_until) == (
        Status.SENDING,
        "",
        NOW,
    )
    assert OutgoingMessage.objects.get(pk=alive.pk).claimed_by == "alive:2:bbbb"
    assert OutgoingMessage.objects.get(pk=unknown.pk).claimed_by == "test:9"
    assert list(ConnectionLease.objects.values_list("holder", flat=True)) == ["alive:2:bbbb"]
    # Released rows are due a moment later, like an expired lease.
    later = NOW + dt.timedelta(microseconds=1)
    assert OutgoingMessage.objects.filter(pk=dead.pk, claimed_until__lt=later).exists()
    assert release_dead_workers_claims(NOW) == 0


def test_the_threshold_is_a_setting_with_a_clear_error() -> None:
    assert dead_after() == dt.timedelta(seconds=30)
    with override_settings(MAILGATE_WORKER_DEAD_SECONDS="8"):
        assert dead_after() == dt.timedelta(seconds=8)
        assert Heartbeat(holder="x").interval() == dt.timedelta(seconds=8) / 3
    with override_settings(MAILGATE_WORKER_DEAD_SECONDS="1"), pytest.raises(SettingsError) as err:
        dead_after()
    assert "MAILGATE_WORKER_DEAD_SECONDS" in str(err.value)
    with override_settings(MAILGATE_WORKER_DEAD_SECONDS="soon"), pytest.raises(SettingsError):
        dead_after()


def test_a_process_whose_beats_stopped_reaching_the_database_stops_sending() -> None:
    beat = Heartbeat(holder="me:1:abcd")
    assert beat.is_current(NOW)  # no beating thread: nothing is claimed about it
    beat.beating = True
    beat.beat(now=NOW)
    assert beat.is_current(NOW + dt.timedelta(seconds=15))
    assert not beat.is_current(NOW + dt.timedelta(seconds=21))


@pytest.mark.django_db(transaction=True)
def test_the_beating_thread_records_the_process_until_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A process heartbeat of its own: an earlier test's beat would make this one not yet due.
    monkeypatch.setattr(heartbeat, "_heartbeat", None)
    done = threading.Event()
    thread = keep_beating(done)
    try:
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
        while not WorkerHeartbeat.objects.exists() and dt.datetime.now(dt.UTC) < deadline:
            threading.Event().wait(0.05)
        assert WorkerHeartbeat.objects.count() == 1
    finally:
        done.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


@time_machine.travel(NOW, tick=False)
def test_an_expired_connection_lease_counts_while_its_worker_lives(
    make_server: Callable[..., MailServer],
) -> None:
    """A live worker may keep a connection open past its lease (between passes, or slowed down):
    it still counts against Concurrent Connections until the worker drops it or is taken as dead."""
    server = make_server(limit_connections=1)
    _seen("alive:2:bbbb", 5)
    ConnectionLease.objects.create(
        server=server, holder="alive:2:bbbb/t1", expires_at=NOW - dt.timedelta(minutes=1)
    )
    pool = ConnectionPool("me:3:cccc")
    until = NOW + dt.timedelta(minutes=5)
    assert not pool.lease(server, NOW, until)
    _seen("alive:2:bbbb", 31)  # its heartbeat is now too old: dead
    assert pool.lease(server, NOW, until)
    assert list(ConnectionLease.objects.values_list("holder", flat=True)) == ["me:3:cccc"]
    pool.close_all()
    assert not ConnectionLease.objects.exists()
