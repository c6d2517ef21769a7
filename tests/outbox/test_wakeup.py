"""An idle worker wakes as soon as mail is queued (NOTIFY on PostgreSQL, a new row on SQLite)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, connections, transaction

from mailgate.outbox import enqueue
from mailgate.outbox.wakeup import _notify, wait_for_mail
from mailgate.servers.models import MailServer


def _send() -> Any:
    return enqueue(from_address="app@example.com", to=["a@example.org"], text="x")


@pytest.fixture
def sender() -> Iterator[Callable[[], threading.Thread]]:
    """Starts a thread that queues a message now and then (its own connection, committed) until told to stop."""
    done = threading.Event()
    threads: list[threading.Thread] = []

    def loop() -> None:
        try:
            # Repeated because the waiter may begin listening only after the first one.
            for _ in range(200):
                _send()
                if done.wait(0.05):
                    return
        finally:
            connections.close_all()

    def start() -> threading.Thread:
        thread = threading.Thread(target=loop, daemon=True)
        threads.append(thread)
        thread.start()
        return thread

    yield start
    done.set()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_an_idle_wait_ends_as_soon_as_another_connection_queues_mail(
    make_server: Callable[..., MailServer], sender: Callable[[], threading.Thread]
) -> None:
    make_server()
    stop = threading.Event()
    started = time.monotonic()
    sender()
    wait_for_mail(stop, 30)
    assert time.monotonic() - started < 5


@pytest.mark.django_db(transaction=True)
def test_an_idle_wait_without_mail_lasts_its_time_and_a_stop_ends_it(
    make_server: Callable[..., MailServer],
) -> None:
    make_server()
    stop = threading.Event()
    started = time.monotonic()
    wait_for_mail(stop, 0.3)
    assert 0.3 <= time.monotonic() - started < 5
    stop.set()
    started = time.monotonic()
    wait_for_mail(stop, 30)
    assert time.monotonic() - started < 1


def test_a_transaction_of_many_messages_announces_once_after_commit(
    make_server: Callable[..., MailServer],
    django_capture_on_commit_callbacks: Any,
) -> None:
    make_server()
    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        for _ in range(5):
            _send()
    expected = [_notify] if connection.vendor == "postgresql" else []
    assert callbacks == expected
