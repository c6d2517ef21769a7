"""Routing by From Filter, send-as, and validation of each bad input at the door."""

from __future__ import annotations

import email
import email.policy

import pytest
from django.core import mail
from django.db import transaction

from mailgate.outbox import enqueue
from mailgate.outbox.compose import Attachment, InvalidMessage, MessageSpec
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.outbox.submit import IdempotencyKeyReused, request_fingerprint


def _send(**fields):
    fields.setdefault("from_address", "app@example.com")
    fields.setdefault("to", ["a@example.org"])
    fields.setdefault("text", "hello")
    return enqueue(**fields)


def test_routing_prefers_exact_address_then_domain_then_no_filter_by_priority(make_server):
    catch_all_low = make_server(name="catch-all 20", priority=20)
    catch_all = make_server(name="catch-all 5", priority=5)
    domain = make_server(name="domain", from_filter="example.com", priority=50)
    exact = make_server(
        name="exact", from_filter="billing@example.com; other@x.example", priority=90
    )
    make_server(name="inactive exact", from_filter="billing@example.com", priority=1, active=False)
    assert _send(from_address="billing@example.com").server == exact
    assert _send(from_address="Sales <SALES@Example.com>").server == domain
    assert _send(from_address="someone@elsewhere.example").server == catch_all
    assert catch_all_low.pk


def test_no_matching_server_is_an_error_at_enqueue_time(make_server):
    make_server(from_filter="example.com")
    with pytest.raises(InvalidMessage) as caught:
        _send(from_address="x@other.example")
    assert "from" in caught.value.errors and "From Filter" in caught.value.errors["from"]
    assert OutgoingMessage.objects.count() == 0


def test_an_oauth_mailbox_refuses_a_foreign_from_unless_send_as_allows_it(make_server):
    make_server(
        auth_method="outlook",
        username="app@example.com",
        send_as="sales@example.com",
        status="token_valid",
    )
    assert _send(from_address="app@example.com").status == Status.QUEUED
    assert _send(from_address="sales@example.com").status == Status.QUEUED
    with pytest.raises(InvalidMessage, match=r"may not send as ceo@example\.com"):
        _send(from_address="ceo@example.com")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"from_address": "not-an-address"}, "from"),
        ({"from_address": ""}, "from"),
        ({"to": ["a@example.org", "b@@example.org"]}, "to[1]"),
        ({"to": ["a@example.org, b@example.org"]}, "to[0]"),
        ({"to": [], "cc": None}, "to"),
        ({"cc": ["bad\r\nBcc: x@example.org"]}, "cc[0]"),
        ({"subject": "hi\r\nBcc: victim@example.org"}, "subject"),
        ({"subject": "hi\nX-Injected: 1"}, "subject"),
        ({"headers": {"X-Ok": "fine", "X-Bad": "a\r\nb"}}, "headers['X-Bad']"),
        ({"headers": {"Bad Name": "x"}}, "headers['Bad Name']"),
        ({"headers": {"Bcc": "x@example.org"}}, "headers['Bcc']"),
        ({"attachments": [Attachment("", b"x")]}, "attachments[0].filename"),
        ({"attachments": [Attachment("a\r\n.txt", b"x")]}, "attachments[0].filename"),
        ({"attachments": [Attachment("../etc/passwd", b"x")]}, "attachments[0].filename"),
        ({"attachments": [Attachment("a.txt", b"x", "not a type")]}, "attachments[0].content_type"),
        ({"to": ["josé@example.invalid"]}, "to[0]"),  # a UTF-8 local part is fine (RFC 6531)
        ({"raw": "no headers at all"}, "raw"),
        ({"raw": "From: a@example.com\r\nSubject: x\r\n\r\nbody", "text": None, "to": None}, "to"),
        ({"raw": "To: b@example.org\r\n\r\nbody", "text": None}, "raw"),
        ({"idempotency_key": ""}, "idempotency_key"),
    ],
)
def test_each_bad_input_is_refused_with_its_field_named(make_server, fields, field):
    make_server()
    with pytest.raises(InvalidMessage) as caught:
        _send(**fields)
    assert field in caught.value.errors, caught.value.errors
    assert OutgoingMessage.objects.count() == 0


def test_a_message_over_the_server_size_limit_is_refused(make_server):
    make_server(max_message_bytes=10_000)
    with pytest.raises(InvalidMessage) as caught:
        _send(attachments=[Attachment("big.bin", b"x" * 20_000)])
    assert "over the 9.8 KB limit" in caught.value.errors["attachments"]


def test_an_international_domain_is_sent_in_its_ascii_form(make_server):
    make_server()
    message = _send(to=["Jörg <joerg@bücher.example>"])
    assert message.to == ["joerg@xn--bcher-kva.example"]
    parsed = email.message_from_bytes(message.raw_bytes, policy=email.policy.default)
    assert "xn--bcher-kva.example" in str(parsed["To"])
    assert "Jörg" in str(parsed["To"])


def test_the_message_id_is_assigned_once_at_enqueue_time(make_server):
    make_server()
    message = _send()
    parsed = email.message_from_bytes(message.raw_bytes, policy=email.policy.default)
    assert parsed["Message-ID"] == message.message_id
    assert message.message_id.endswith("@example.com>")


def test_a_raw_message_keeps_its_message_id_and_loses_its_bcc_header(make_server):
    make_server()
    raw = (
        "From: App <app@example.com>\r\nTo: a@example.org\r\nBcc: hidden@example.org\r\n"
        "Message-ID: <keep-me@example.com>\r\nSubject: raw\r\n\r\nbody\r\n"
    )
    message = enqueue(raw=raw)
    assert message.message_id == "<keep-me@example.com>"
    assert message.bcc == ["hidden@example.org"]
    assert b"hidden@example.org" not in message.raw_bytes


def test_enqueue_joins_the_callers_transaction(make_server):
    make_server()
    with pytest.raises(RuntimeError), transaction.atomic():
        _send()
        raise RuntimeError("the invoice could not be confirmed")
    assert OutgoingMessage.objects.count() == 0


def test_the_same_idempotency_key_returns_the_first_message(make_server):
    make_server()
    first = _send(idempotency_key="k1", subject="once")
    again = _send(idempotency_key="k1", subject="once")
    assert first.pk == again.pk and OutgoingMessage.objects.count() == 1
    assert (first.idempotent_replay, again.idempotent_replay) == (False, True)
    assert len(first.idempotency_fingerprint) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "different"},
        {"to": ["b@example.org"]},
        {"html": "<p>hello</p>"},
        {"headers": {"X-Order": "2"}},
        {"attachments": [Attachment("a.txt", b"other bytes")]},
        {"server": "second"},
    ],
)
def test_an_idempotency_key_reused_for_a_different_message_is_refused(make_server, change):
    make_server(name="first")
    make_server(name="second")
    fields = {
        "subject": "once",
        "headers": {"X-Order": "1"},
        "attachments": [Attachment("a.txt", b"hi")],
        "server": "first",
    }
    first = _send(idempotency_key="k1", **fields)
    assert _send(idempotency_key="k1", **fields).pk == first.pk
    with pytest.raises(IdempotencyKeyReused) as caught:
        _send(idempotency_key="k1", **{**fields, **change})
    assert isinstance(caught.value, InvalidMessage)
    assert list(caught.value.errors) == ["idempotency_key"]
    problem = caught.value.errors["idempotency_key"]
    assert f"already used by message {first.pk}" in problem
    assert "use a new key for a different message" in problem
    assert [m.pk for m in OutgoingMessage.objects.all()] == [first.pk]


def test_a_raw_message_with_a_key_is_fingerprinted_by_its_bytes_and_envelope(make_server):
    make_server()
    raw = b"From: app@example.com\r\nTo: b@example.org\r\nSubject: raw\r\n\r\nhello\r\n"
    first = enqueue(raw=raw, idempotency_key="r1")
    assert enqueue(raw=raw.decode(), idempotency_key="r1").pk == first.pk  # str or bytes alike
    for different in (
        {"raw": raw.replace(b"hello", b"hullo")},
        {"raw": raw, "to": ["c@example.org"]},
        {"raw": raw, "from_address": "other@example.com"},
    ):
        with pytest.raises(IdempotencyKeyReused):
            enqueue(idempotency_key="r1", **different)
    assert OutgoingMessage.objects.count() == 1


def test_a_request_that_lost_the_race_for_its_key_is_judged_the_same_way(make_server, monkeypatch):
    make_server()
    first = _send(idempotency_key="k1", subject="once")
    # As if each request had looked before the first one's row was committed: the unique index
    # refuses the second row, and the first message decides.
    monkeypatch.setattr(
        OutgoingMessage.objects, "filter", lambda **_: OutgoingMessage.objects.none()
    )
    again = _send(idempotency_key="k1", subject="once")
    assert again.pk == first.pk and again.idempotent_replay
    with pytest.raises(IdempotencyKeyReused):
        _send(idempotency_key="k1", subject="other")
    assert OutgoingMessage.objects.count() == 1


@pytest.mark.nodb
def test_the_fingerprint_leaves_out_empty_fields_and_ignores_order():
    fields = {"from_address": "a@example.com", "to": ["b@example.org"], "text": "x"}

    def fingerprint(**given):
        return request_fingerprint(MessageSpec(**given))

    same = fingerprint(**fields)
    assert fingerprint(**dict(reversed(fields.items()))) == same
    assert fingerprint(**fields, cc=[], html=None, subject="", headers={}) == same
    assert fingerprint(**{**fields, "to": ("b@example.org",)}) == same
    assert fingerprint(**{**fields, "text": "y"}) != same
    assert fingerprint(**{**fields, "to": ["b@example.org", "c@example.org"]}) != same
    assert request_fingerprint(MessageSpec(**fields), "Sales") != same


@pytest.mark.nodb
def test_the_fingerprint_is_the_one_stored_with_messages_queued_before():
    # Fingerprints of a request are kept with its message: a retry must still match them.
    spec = MessageSpec(from_address="a@example.com", to=["b@example.org"], text="x")
    assert request_fingerprint(spec) == (
        "cc5e02172f183e57e65eeabbfa6648dadfb8fe0bb0ba874fcc986a1ce20f4673"
    )
    spec = MessageSpec(
        from_address="a@example.com",
        to="b@example.org",
        cc=["c@x.org"],
        reply_to="r@x.org",
        subject="s",
        text="x",
        html="<p>",
        headers={"X-A": "1"},
        attachments=[Attachment("a.txt", b"hi", "text/plain")],
    )
    assert request_fingerprint(spec, "Sales") == (
        "0f03dee1db2384632caaedd690fe75bc043933204717950a6de815aba7a653c2"
    )
    spec = MessageSpec(raw="From: a@b.c\r\n\r\nhi", to=["x@y.z"])
    assert request_fingerprint(spec) == (
        "ee1b99efcfb2de4a31148f54c7397d19365ab4dc387a87448bd2945df28a527b"
    )


def test_the_django_email_backend_queues_send_mail(make_server, settings):
    make_server()
    settings.EMAIL_BACKEND = "mailgate.outbox.backends.EmailBackend"
    sent = mail.send_mail("Hi", "Body", "App <app@example.com>", ["a@example.org"])
    message = OutgoingMessage.objects.get()
    assert sent == 1
    assert message.source == "django" and message.subject == "Hi"
    email_message = mail.EmailMessage(
        "S", "B", "app@example.com", ["a@example.org"], bcc=["z@example.org"]
    )
    assert email_message.send() == 1
    second = OutgoingMessage.objects.order_by("-id").first()
    assert second.bcc == ["z@example.org"] and b"z@example.org" not in second.raw_bytes
    with pytest.raises(InvalidMessage):
        mail.send_mail("Hi", "Body", "app@example.com", ["broken@@example.org"])


def test_enqueue_takes_a_message_spec_or_its_fields_but_not_both(make_server):
    make_server()
    spec = MessageSpec(from_address="app@example.com", to=["a@example.org"], subject="s", text="x")
    message = enqueue(spec, idempotency_key="spec-1")
    again = enqueue(**vars(spec), idempotency_key="spec-1")
    assert (again.pk, again.idempotent_replay) == (message.pk, True)
    assert (message.subject, message.to, message.source) == ("s", ["a@example.org"], "python")
    with pytest.raises(TypeError, match="not both"):
        enqueue(spec, subject="other")
    with pytest.raises(TypeError, match="sender"):
        enqueue(sender="app@example.com", to=["a@example.org"], text="x")
