"""The delivery step's short wait after a pass that emptied the queue (MAILGATE_OUTBOX_GATHER_SECONDS):
mail that arrives meanwhile goes out in the same step, several messages to one claim."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from mailgate.outbox import enqueue, worker
from mailgate.outbox.claims import Claimer
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.outbox.worker import Deliverer
from mailgate.servers.models import MailServer
from tests.smtpsink import SMTPSink


class RecordedStop(threading.Event):
    """A stop event that is never set; each wait() is recorded and runs `during_wait` first (mail
    arriving while the worker waits)."""

    def __init__(self, during_wait: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.waits: list[float | None] = []
        self.during_wait = during_wait
        self.arrived = 0  # messages queued by during_wait

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if self.during_wait is not None:
            self.during_wait(len(self.waits))
        return False


@pytest.fixture(autouse=True)
def _long_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that may go on for a minute: a loaded machine cannot end it (KEEP_SENDING_SECONDS)
    before the passes these tests count."""
    monkeypatch.setattr(worker, "KEEP_SENDING_SECONDS", 60.0)


@pytest.fixture
def claims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many messages each claim took, in order."""
    taken: list[int] = []
    original = Claimer.claim

    def claim(self: Claimer, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if result is not None and result[1]:
            taken.append(len(result[1]))
        return result

    monkeypatch.setattr(Claimer, "claim", claim)
    return taken


def _queue(count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        enqueue(from_address="app@example.com", to=[f"r{i}@example.org"], text="x")


def _step(stop: threading.Event) -> bool:
    deliverer = Deliverer()
    try:
        return deliverer.step(stop)
    finally:
        deliverer.close_all()


def _deliver(make_server: Callable[..., MailServer], queued: int, stop: threading.Event) -> None:
    """Queue `queued` messages for a server on a real SMTP sink, run one step; all arrive."""
    with SMTPSink() as sink:
        make_server(sink)
        _queue(queued)
        assert _step(stop)
        assert len(sink.received) == queued + _arrived(stop)


def _arrived(stop: threading.Event) -> int:
    return stop.arrived if isinstance(stop, RecordedStop) else 0


def test_mail_that_arrives_during_the_wait_goes_out_in_the_same_step_with_one_claim(
    make_server: Callable[..., MailServer], settings: Any, claims: list[int]
) -> None:
    settings.MAILGATE_OUTBOX_GATHER_SECONDS = 0.05

    def arrive(wait: int) -> None:  # three messages during the first wait, none after that
        if wait == 1:
            _queue(3, start=1)
            stop.arrived = 3

    stop = RecordedStop(arrive)
    _deliver(make_server, 1, stop)
    assert claims == [1, 3]
    assert stop.waits[:2] == [0.05, 0.05]  # after the pass of 1, and after the pass of 3
    assert len(stop.waits) == 2  # the third pass found nothing: the step ended
    assert OutgoingMessage.objects.filter(status=Status.SENT).count() == 4


def test_no_wait_after_a_full_batch_a_backlog_is_drained_at_once(
    make_server: Callable[..., MailServer], settings: Any, claims: list[int]
) -> None:
    settings.MAILGATE_OUTBOX_GATHER_SECONDS = 0.05
    settings.MAILGATE_OUTBOX_BATCH_SIZE = 2
    stop = RecordedStop()
    _deliver(make_server, 5, stop)
    assert claims == [2, 2, 1]
    assert stop.waits == [0.05]  # only after the last pass, which emptied the queue


def test_a_gather_of_zero_never_waits(
    make_server: Callable[..., MailServer], settings: Any, claims: list[int]
) -> None:
    settings.MAILGATE_OUTBOX_GATHER_SECONDS = 0
    stop = RecordedStop()
    _deliver(make_server, 2, stop)
    assert claims == [2]
    assert stop.waits == []


def test_a_stop_during_the_wait_ends_the_step_without_waiting_it_out(
    make_server: Callable[..., MailServer], settings: Any
) -> None:
    settings.MAILGATE_OUTBOX_GATHER_SECONDS = 30
    with SMTPSink() as sink:
        make_server(sink)
        _queue(1)
        stop = threading.Event()
        timer = threading.Timer(0.2, stop.set)
        timer.start()
        started = time.monotonic()
        try:
            assert _step(stop)
        finally:
            timer.cancel()
        # Far less than the 30 s wait: the stop ended it.
        assert time.monotonic() - started < 10
        assert len(sink.received) == 1
