"""One worker sends over up to a server's Concurrent Connections side by side (worker.Lane), each
lane a thread with its own SMTP and database connection; the limit holds across lanes and workers."""

from __future__ import annotations

import collections
import contextlib
import email
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from mailgate.outbox import enqueue
from mailgate.outbox.models import ConnectionLease, DeliveryAttempt, OutgoingMessage, Status
from mailgate.outbox.worker import Deliverer
from mailgate.servers.models import MailServer
from tests.smtpsink import SMTPSink

# The lanes are threads with database connections of their own: they see only committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


def queue(server: MailServer, count: int) -> list[str]:
    return [
        enqueue(
            from_address="app@example.com", to=[f"r{i}@example.org"], text="x", server=server
        ).message_id
        for i in range(count)
    ]


def received(sink: SMTPSink) -> collections.Counter[str]:
    with sink.lock:
        return collections.Counter(
            str(email.message_from_bytes(r.data)["Message-ID"]) for r in sink.received
        )


def drain(deliverer: Deliverer, server: MailServer, passes: int = 50) -> float:
    """Run passes until the server has nothing left to send; the seconds it took."""
    stop = threading.Event()
    started = time.perf_counter()
    for _ in range(passes):
        # A lane's pass that broke off raises; the next pass gives its claims back.
        with contextlib.suppress(Exception):
            deliverer.step(stop)
        if not OutgoingMessage.objects.filter(server=server).exclude(status=Status.SENT).exists():
            return time.perf_counter() - started
    raise AssertionError(
        f"not drained in {passes} passes: "
        f"{list(OutgoingMessage.objects.filter(server=server).values_list('status', 'claimed_by'))}"
    )


@pytest.mark.parametrize("mode", ["steps", "bdat"])
def test_one_worker_sends_over_the_servers_connections_side_by_side(
    mode: str, make_server: Callable[..., MailServer]
) -> None:
    """A server that takes 100 ms to answer each message: with Concurrent Connections 4 one worker
    drains the queue in about a quarter of the time it takes with 1 (same test, same machine)."""
    times = {}
    postgres = connection.vendor == "postgresql"
    for limit in (1, 4):
        with SMTPSink(
            data_delay=0.1, pipelining=mode == "bdat", chunking="yes" if mode == "bdat" else ""
        ) as sink:
            server = make_server(sink, limit_connections=limit)
            ids = queue(server, 40)
            deliverer = Deliverer(overlap=True, connections=4)
            try:
                times[limit] = drain(deliverer, server)
            finally:
                deliverer.close_all()
            assert received(sink) == collections.Counter(ids)  # each once
            # The deliveries overlapped, up to the limit; on SQLite a worker uses one connection.
            assert sink.max_in_data == sink.max_active == (limit if postgres else 1)
            workers = set(
                DeliveryAttempt.objects.filter(server=server).values_list("worker", flat=True)
            )
            assert len(workers) == (limit if postgres else 1), workers  # one holder per lane
    if not postgres:
        return
    ratio = times[4] / times[1]
    print(
        f"40 messages, 100 ms reply: limit 1 {times[1]:.2f} s, limit 4 {times[4]:.2f} s = {ratio:.2f}"
    )
    # 0.25 when the waits overlap perfectly; a loaded machine adds the lanes' CPU time (0.3-0.5
    # with a load average of 12 on 2 cores).
    assert ratio < 0.6, times


def test_the_limit_holds_across_the_lanes_of_two_workers(
    make_server: Callable[..., MailServer],
) -> None:
    with SMTPSink(data_delay=0.02) as sink:
        server = make_server(sink, limit_connections=3)
        ids = queue(server, 90)
        workers = [Deliverer(f"w{n}:1:x", overlap=True, connections=4) for n in (1, 2)]
        errors: list[BaseException] = []

        def run(deliverer: Deliverer) -> None:
            try:
                drain(deliverer, server, passes=200)
            except BaseException as exc:
                errors.append(exc)
            finally:
                deliverer.close_all()
                connection.close()  # this thread's own (lane 0's)

        if connection.vendor == "postgresql":
            threads = [threading.Thread(target=run, args=(w,)) for w in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
        else:
            # The test's SQLite database is in memory, shared between threads with table locks
            # that do not wait: the two workers (one connection each on SQLite) take turns here.
            stop = threading.Event()
            for _ in range(200):
                for deliverer in workers:
                    deliverer.step(stop)
                if not OutgoingMessage.objects.exclude(status=Status.SENT).exists():
                    break
            for deliverer in workers:
                deliverer.close_all()
        assert not errors, errors
        assert received(sink) == collections.Counter(ids)
        assert sink.max_active <= 3
        if connection.vendor == "postgresql":
            assert sink.max_in_data >= 2  # they did overlap
        assert not ConnectionLease.objects.exists()


def test_no_limit_is_bounded_by_the_workers_own_number_of_connections(
    make_server: Callable[..., MailServer],
) -> None:
    with SMTPSink(data_delay=0.02) as sink:
        server = make_server(sink, limit_connections=0)  # a generic server: 0 = no limit
        ids = queue(server, 30)
        deliverer = Deliverer(overlap=True, connections=3)
        try:
            drain(deliverer, server)
        finally:
            deliverer.close_all()
        assert received(sink) == collections.Counter(ids)
        assert sink.max_active == (3 if connection.vendor == "postgresql" else 1)


def test_a_lane_that_breaks_off_gives_back_only_its_own_claims(
    make_server: Callable[..., MailServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails for one lane after its message was delivered: that message is sent again
    (the at-most-once boundary of that one connection); the other lanes' messages, claimed and in
    flight meanwhile, are neither given back under them nor sent twice."""
    with SMTPSink(data_delay=0.02, pipelining=True, chunking="yes") as sink:
        server = make_server(sink, limit_connections=3)
        ids = queue(server, 60)
        deliverer = Deliverer(overlap=True, connections=3)
        stop = threading.Event()
        # SQLite: the one lane of a worker there (its record_sent is the Deliverer's).
        postgres = connection.vendor == "postgresql"
        broken = deliverer._lane(2) if postgres else deliverer.lanes[0]
        sent = broken.record_sent
        calls = itertools.count()
        released: list[int] = []
        release_all = broken.claimer.release_all

        def fails_once(*args: Any) -> None:
            if next(calls) == 3:
                raise RuntimeError("the database went away")
            sent(*args)

        def counted() -> int:
            released.append(release_all())
            return released[-1]

        monkeypatch.setattr(broken if postgres else deliverer, "record_sent", fails_once)
        monkeypatch.setattr(broken.claimer, "release_all", counted)
        try:
            with pytest.raises(RuntimeError):
                deliverer.step(stop)
            drain(deliverer, server)
        finally:
            deliverer.close_all()
        counts = received(sink)
        assert set(counts) == set(ids)  # nothing lost
        twice = [m for m, n in counts.items() if n > 1]
        # The one whose outcome was lost; with overlap, its write failed after the next message's
        # data was held back, so exactly one.
        assert len(twice) <= 1, twice
        assert released and released[0] >= 1  # the broken lane's claims went back at once
        attempts = DeliveryAttempt.objects.filter(server=server)
        assert attempts.values("message").distinct().count() == 60


def test_the_worker_reads_its_number_of_connections_from_the_setting(
    make_server: Callable[..., MailServer], settings: Any
) -> None:
    settings.MAILGATE_OUTBOX_WORKER_CONNECTIONS = 2
    with SMTPSink(data_delay=0.02) as sink:
        server = make_server(sink, limit_connections=3)
        queue(server, 20)
        deliverer = Deliverer(overlap=True, connections=None)
        try:
            drain(deliverer, server)
        finally:
            deliverer.close_all()
        assert sink.max_active == (2 if connection.vendor == "postgresql" else 1)


def test_a_connection_dropped_in_one_lane_resends_only_its_message_in_flight(
    make_server: Callable[..., MailServer], settings: Any
) -> None:
    settings.MAILGATE_OUTBOX_BACKOFF_BASE = settings.MAILGATE_OUTBOX_BACKOFF_MAX = 0.01
    drops = itertools.count(1)
    with SMTPSink(
        data_delay=0.01, pipelining=True, chunking="yes", drop_after_data=lambda: next(drops) == 20
    ) as sink:
        server = make_server(sink, limit_connections=3)
        ids = queue(server, 60)
        deliverer = Deliverer(overlap=True, connections=3)
        try:
            drain(deliverer, server)
        finally:
            deliverer.close_all()
        counts = received(sink)
        assert set(counts) == set(ids)
        # The message whose reply was lost with the connection, and no other.
        assert sum(n - 1 for n in counts.values()) == 1
        if connection.vendor == "postgresql":
            assert sink.max_in_data >= 2  # the other lanes were sending meanwhile
