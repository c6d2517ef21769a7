"""What the worker writes per message, and how it picks the due ones: exact rows, no extra queries."""

from __future__ import annotations

import datetime as dt
import email
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from mailgate.outbox import enqueue
from mailgate.outbox.models import DeliveryAttempt, Outcome, OutgoingMessage, Status
from mailgate.outbox.worker import Deliverer, due_candidates
from mailgate.servers.models import MailServer
from mailgate.transports.base import Envelope, Reply, SendResult
from tests.smtpsink import SMTPSink

NOW = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)


def _claimed(server: MailServer, holder: str, **fields: object) -> OutgoingMessage:
    message = enqueue(
        from_address="app@example.com", to=["a@example.org", "b@example.org"], text="x"
    )
    OutgoingMessage.objects.filter(pk=message.pk).update(
        status=Status.SENDING,
        claimed_by=holder,
        claimed_until=NOW + dt.timedelta(minutes=5),
        **fields,
    )
    return OutgoingMessage.objects.get(pk=message.pk)


def _result(message: OutgoingMessage) -> SendResult:
    return SendResult(
        Envelope(message.from_address, message.envelope_recipients, message.raw_bytes, message.pk),
        reply=Reply.parse(250, "2.0.0 OK <Q1D> [Hostname=mx.example]"),
        queue_id="Q1D",
        refused={"b@example.org": Reply.parse(550, "5.1.1 unknown user")},
        duration=0.25,
    )


@time_machine.travel(NOW, tick=False)
def test_a_sent_message_is_recorded_with_one_update_and_one_insert(
    make_server: Callable[..., MailServer],
) -> None:
    server = make_server()
    deliverer = Deliverer(holder="worker-1")
    message = _claimed(server, "worker-1", attempts=2)
    with CaptureQueriesContext(connection) as captured:
        deliverer.record_sent(server, message, _result(message))
    statements = [q["sql"].split()[0].upper() for q in captured.captured_queries]
    assert "SELECT" not in statements
    assert statements.count("UPDATE") + statements.count("WITH") == 1
    message.refresh_from_db()
    assert message.status == Status.SENT
    assert (message.sent_at, message.updated_at, message.attempts) == (NOW, NOW, 3)
    assert message.last_reply == "250 2.0.0 OK <Q1D> [Hostname=mx.example]"
    assert message.queue_id == "Q1D"
    assert message.last_error == "refused recipients: b@example.org: 550 5.1.1 unknown user"
    assert (message.claimed_by, message.claimed_until, message.diagnosis) == ("", None, "")
    (attempt,) = DeliveryAttempt.objects.filter(message=message)
    assert (attempt.server_id, attempt.outcome, attempt.step) == (server.pk, Outcome.SENT, "data")
    assert attempt.started_at == NOW - dt.timedelta(seconds=0.25)
    assert (attempt.duration_ms, attempt.reply_code, attempt.recipients) == (250, 250, 2)
    assert attempt.reply == message.last_reply and attempt.error == message.last_error
    assert attempt.worker == "worker-1"


@time_machine.travel(NOW, tick=False)
def test_a_send_whose_claim_moved_on_is_logged_and_its_attempt_kept(
    make_server: Callable[..., MailServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    message = _claimed(server, "worker-2")
    with caplog.at_level(logging.WARNING, logger="mailgate.outbox"):
        Deliverer(holder="worker-1").record_sent(server, message, _result(message))
    message.refresh_from_db()
    assert (message.status, message.claimed_by) == (Status.SENDING, "worker-2")
    assert DeliveryAttempt.objects.filter(message=message, outcome=Outcome.SENT).count() == 1
    assert f"message {message.pk} was sent but its claim had moved on" in caplog.text


def test_due_candidates_are_the_longest_waiting_of_one_server_including_abandoned_claims(
    make_server: Callable[..., MailServer],
) -> None:
    server = make_server(from_filter="example.com")
    other = make_server(from_filter="other.example")
    now = timezone.now()

    def message(status: str, minutes_ago: float, **fields: object) -> int:
        pk = enqueue(from_address="app@example.com", to=["a@example.org"], text="x").pk
        OutgoingMessage.objects.filter(pk=pk).update(
            status=status, next_attempt_at=now - dt.timedelta(minutes=minutes_ago), **fields
        )
        return pk

    oldest_deferred = message(Status.DEFERRED, 30)
    abandoned = message(Status.SENDING, 20, claimed_until=now - dt.timedelta(seconds=1))
    queued = message(Status.QUEUED, 10)
    message(Status.QUEUED, -5)  # not due yet
    message(Status.SENDING, 40, claimed_until=now + dt.timedelta(minutes=1))  # claimed, alive
    message(Status.SENT, 50)
    message(Status.HELD, 50)
    foreign = enqueue(from_address="x@other.example", to=["a@example.org"], text="x")
    assert foreign.server == other
    sizes = dict(OutgoingMessage.objects.values_list("pk", "size"))
    expected = [(pk, 1, sizes[pk]) for pk in (oldest_deferred, abandoned, queued)]
    assert due_candidates(server.pk, now, 10) == expected
    assert due_candidates(server.pk, now, 2) == expected[:2]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["steps", "pipelining", "bdat"])
def test_with_overlap_each_outcome_is_committed_before_the_next_messages_data(
    mode: str, make_server: Callable[..., MailServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash guarantee (at most the one message in flight is sent twice) in every way of
    sending: the server completes message N (end of DATA, or BDAT LAST) only once N-1's outcome
    is committed."""
    events: list[str] = []
    lock = threading.Lock()
    record_sent = Deliverer.record_sent

    def recorded(
        self: Deliverer, server: MailServer, message: OutgoingMessage, result: Any
    ) -> None:
        record_sent(self, server, message, result)
        with lock:
            events.append(f"committed {message.message_id}")

    def data(envelope: Any) -> None:
        message_id = email.message_from_bytes(envelope.original_content)["Message-ID"]
        with lock:
            events.append(f"data {message_id}")

    monkeypatch.setattr(Deliverer, "record_sent", recorded)
    with SMTPSink(pipelining=mode != "steps", chunking="yes" if mode == "bdat" else "") as sink:
        sink.data_reply = data
        server = make_server(sink)
        ids = [
            enqueue(from_address="app@example.com", to=[f"r{i}@example.org"], text="x").message_id
            for i in range(12)
        ]
        deliverer = Deliverer(overlap=True)
        try:
            assert deliverer.step(threading.Event())
        finally:
            deliverer.close_all()
    assert OutgoingMessage.objects.filter(status=Status.SENT).count() == 12
    assert DeliveryAttempt.objects.filter(outcome=Outcome.SENT).count() == 12
    assert server.pk
    for previous, current in itertools.pairwise(ids):
        assert events.index(f"committed {previous}") < events.index(f"data {current}")


@time_machine.travel(NOW, tick=False)
def test_a_claim_is_bounded_in_bytes_and_a_larger_message_goes_alone(
    make_server: Callable[..., MailServer], settings: Any
) -> None:
    server = make_server()
    small = [
        enqueue(from_address="app@example.com", to=["a@example.org"], text="x" * 1000)
        for _ in range(3)
    ]
    big = enqueue(from_address="app@example.com", to=["a@example.org"], text="y" * 50_000)
    settings.MAILGATE_OUTBOX_BATCH_BYTES = small[0].size * 2 + 10
    deliverer = Deliverer(holder="worker-1")
    claimed = deliverer.claim(server.pk)
    assert claimed is not None
    assert [m.pk for m in claimed[1]] == [small[0].pk, small[1].pk]
    deliverer.release(claimed[1])
    OutgoingMessage.objects.filter(pk__in=[m.pk for m in small]).update(status=Status.SENT)
    claimed = deliverer.claim(server.pk)
    assert claimed is not None
    assert [m.pk for m in claimed[1]] == [big.pk]  # over the bound by itself, still sent
    assert big.size > settings.MAILGATE_OUTBOX_BATCH_BYTES
    deliverer.close_all()
