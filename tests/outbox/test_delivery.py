"""Delivery outcomes against a real SMTP server on loopback."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from mailgate.outbox import enqueue
from mailgate.outbox.models import DeliveryAttempt, OutgoingMessage, ServerState, Status


def _queue(n: int = 1, **extra):
    return [
        enqueue(
            from_address="app@example.com",
            to=[f"user{i}@example.org"],
            subject=f"hello {i}",
            text="body",
            **extra,
        )
        for i in range(n)
    ]


def test_it_sends_a_queued_message_and_records_the_reply_and_queue_id(sink, make_server, deliver):
    make_server(sink)
    (message,) = _queue()
    assert deliver() is True
    message.refresh_from_db()
    assert message.status == Status.SENT
    assert message.queue_id == "Q000001"
    assert message.last_reply.startswith("250 2.0.0")
    assert message.attempts == 1
    (received,) = sink.received
    assert received.rcpt_tos == ["user0@example.org"]
    assert message.message_id.encode() in received.data
    attempt = DeliveryAttempt.objects.get(message=message)
    assert attempt.outcome == "sent" and attempt.reply_code == 250


def test_it_reuses_one_connection_for_a_batch(sink, make_server, deliver):
    make_server(sink)
    _queue(5)
    deliver()
    assert OutgoingMessage.objects.filter(status=Status.SENT).count() == 5
    assert sink.connections == 1


def test_bcc_recipients_get_the_message_but_not_the_header(sink, make_server, deliver):
    make_server(sink)
    enqueue(
        from_address="app@example.com", to=["a@example.org"], bcc=["secret@example.org"], text="x"
    )
    deliver()
    (received,) = sink.received
    assert sorted(received.rcpt_tos) == ["a@example.org", "secret@example.org"]
    assert b"secret@example.org" not in received.data


def test_a_4xx_reply_defers_with_back_off(sink, make_server, deliver):
    make_server(sink)
    sink.data_reply = "451 4.3.0 Mail server temporarily rejected message"
    (message,) = _queue()
    with time_machine.travel(dt.datetime(2030, 1, 1, tzinfo=dt.UTC), tick=False):
        message.created_at = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
        message.next_attempt_at = message.created_at
        message.save()
        deliver()
    message.refresh_from_db()
    assert message.status == Status.DEFERRED
    assert message.retries == 1
    assert "451 4.3.0" in message.last_reply
    delay = (message.next_attempt_at - message.created_at).total_seconds()
    assert 48 <= delay <= 72  # 60 s +- 20 % jitter


def test_a_5xx_reply_fails_at_once_with_the_reply_and_diagnosis(sink, make_server, deliver):
    make_server(sink)
    sink.rcpt_reply = "550 5.1.1 User unknown"
    (message,) = _queue()
    deliver()
    message.refresh_from_db()
    assert message.status == Status.FAILED
    assert message.last_reply == "550 5.1.1 User unknown"
    assert "recipient address was refused" in message.diagnosis
    assert sink.received == []


def test_a_partially_refused_message_is_sent_to_the_others_and_says_who_was_refused(
    sink, make_server, deliver
):
    make_server(sink)
    sink.rcpt_reply = lambda address: (
        "550 5.1.1 User unknown" if address.startswith("bad") else None
    )
    message = enqueue(
        from_address="app@example.com", to=["good@example.org", "bad@example.org"], text="x"
    )
    deliver()
    message.refresh_from_db()
    assert message.status == Status.SENT
    assert "bad@example.org" in message.last_error
    assert sink.received[0].rcpt_tos == ["good@example.org"]


def test_recipients_refused_for_now_are_retried_alone_and_the_others_get_it_once(
    sink, make_server, deliver
):
    make_server(sink)
    busy = {"later@example.org"}
    sink.rcpt_reply = lambda address: (
        "452 4.2.2 Mailbox full, try again later" if address in busy else None
    )
    message = enqueue(
        from_address="app@example.com", to=["now@example.org", "later@example.org"], text="x"
    )
    deliver()
    message.refresh_from_db()
    assert message.status == Status.DEFERRED
    assert message.pending_recipients == ["later@example.org"]
    assert "later@example.org: 452 4.2.2" in message.last_error
    assert [r.rcpt_tos for r in sink.received] == [["now@example.org"]]
    busy.clear()
    with time_machine.travel(message.next_attempt_at + dt.timedelta(seconds=1), tick=False):
        deliver()
    message.refresh_from_db()
    assert message.status == Status.SENT
    assert [r.rcpt_tos for r in sink.received] == [["now@example.org"], ["later@example.org"]]
    assert list(
        DeliveryAttempt.objects.filter(message=message)
        .order_by("id")
        .values_list("outcome", flat=True)
    ) == ["deferred", "sent"]


def test_an_auth_failure_holds_the_whole_server_queue(sink, make_server, deliver):
    sink.stop()
    sink.users = {"app@example.com": "right password"}
    sink.start()
    server = make_server(sink, username="app@example.com", password="wrong password")
    messages = _queue(3)
    deliver()
    server.refresh_from_db()
    assert server.held_at is not None
    assert "535" in server.hold_reason
    assert set(OutgoingMessage.objects.values_list("status", flat=True)) == {Status.HELD}
    later = enqueue(from_address="app@example.com", to=["x@example.org"], text="later")
    assert later.status == Status.HELD
    assert all(m.pk for m in messages)


def test_a_held_server_resumes_by_itself_once_its_credentials_work(
    sink, make_server, deliver, settings
):
    settings.MAILGATE_OUTBOX_PROBE_SECONDS = 60
    sink.stop()
    sink.users = {"app@example.com": "right password"}
    sink.start()
    server = make_server(sink, username="app@example.com", password="wrong password")
    _queue(2)
    start = dt.datetime.now(dt.UTC)
    with time_machine.travel(start, tick=False):
        deliver()
    server.refresh_from_db()
    assert server.held_at is not None
    server.password = "right password"
    server.save(update_fields=["password"])
    with time_machine.travel(start + dt.timedelta(seconds=30), tick=False):
        deliver()  # too early for a probe
    assert OutgoingMessage.objects.filter(status=Status.HELD).count() == 2
    with time_machine.travel(start + dt.timedelta(seconds=61), tick=False):
        deliver()  # probe passes, queue released
        deliver()
    server.refresh_from_db()
    assert server.held_at is None and server.hold_reason == ""
    assert OutgoingMessage.objects.filter(status=Status.SENT).count() == 2
    assert [r.login for r in sink.received] == ["app@example.com", "app@example.com"]


def test_release_server_queues_the_held_messages_again(sink, make_server, deliver):
    from mailgate.outbox.hold import hold_server, release_server

    server = make_server(sink)
    _queue(2)
    hold_server(server, "SMTP AUTH is disabled")
    assert OutgoingMessage.objects.filter(status=Status.HELD).count() == 2
    assert deliver() is False
    assert release_server(server) == 2
    deliver()
    assert OutgoingMessage.objects.filter(status=Status.SENT).count() == 2


def test_a_throttling_reply_pauses_the_server_without_burning_retries(sink, make_server, deliver):
    server = make_server(sink)
    sink.mail_reply = "432 4.3.2 Concurrent connections limit exceeded."
    first, second = _queue(2)
    deliver()
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == Status.DEFERRED and first.retries == 0
    assert second.status == Status.QUEUED and second.attempts == 0
    state = ServerState.objects.get(server=server)
    assert state.next_allowed_at is not None and "concurrent" in state.throttle_reason.lower()
    assert first.next_attempt_at == state.next_allowed_at
    assert DeliveryAttempt.objects.get(message=first).outcome == "throttled"


def test_a_connection_refused_defers_and_the_server_coming_back_delivers(
    sink, make_server, deliver
):
    make_server(sink)
    sink.stop()
    (message,) = _queue()
    start = dt.datetime.now(dt.UTC)
    with time_machine.travel(start, tick=False):
        deliver()
    message.refresh_from_db()
    assert message.status == Status.DEFERRED
    assert "cannot connect" in message.last_error
    with time_machine.travel(start + dt.timedelta(seconds=200), tick=False):
        deliver()  # still down: second deferral, longer pause
    message.refresh_from_db()
    assert message.retries == 2
    sink.start()
    with time_machine.travel(message.next_attempt_at + dt.timedelta(seconds=1), tick=False):
        deliver()
    message.refresh_from_db()
    assert message.status == Status.SENT
    assert message.attempts == 3
    assert len(sink.received) == 1


def test_a_message_deferred_past_the_maximum_age_fails_with_the_reason(
    sink, make_server, deliver, settings
):
    settings.MAILGATE_OUTBOX_MAX_AGE = 3600
    make_server(sink)
    sink.data_reply = "451 4.7.1 Greylisted"
    (message,) = _queue()
    start = message.created_at
    when = start
    for _ in range(20):
        with time_machine.travel(when, tick=False):
            deliver()
        message.refresh_from_db()
        if message.status != Status.DEFERRED:
            break
        when = message.next_attempt_at
    assert message.status == Status.FAILED
    assert "Given up after" in message.diagnosis
    assert message.next_attempt_at <= start + dt.timedelta(seconds=3600)


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ("250 2.0.0 OK", Status.SENT),
        ("452 4.2.2 Mailbox full", Status.DEFERRED),
        ("554 5.6.0 Message rejected", Status.FAILED),
        (
            "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            Status.DEFERRED,
        ),
        ("554 5.2.252 SendAsDenied; a not allowed to send as b", Status.HELD),
    ],
)
def test_each_reply_class_leads_to_its_outcome(sink, make_server, deliver, reply, status):
    make_server(sink)
    sink.data_reply = None if reply.startswith("250") else reply
    (message,) = _queue()
    deliver()
    message.refresh_from_db()
    assert message.status == status
