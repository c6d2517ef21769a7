"""The server list behind routing is read once per transaction, and every change is seen in time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from mailgate.outbox import enqueue, routing
from mailgate.outbox.compose import InvalidMessage
from mailgate.outbox.hold import hold_server, release_server
from mailgate.outbox.models import Status
from mailgate.servers.models import MailServer


def _send(**fields: Any) -> Any:
    fields.setdefault("from_address", "app@example.com")
    fields.setdefault("to", ["a@example.org"])
    fields.setdefault("text", "hello")
    return enqueue(**fields)


def _server_queries(captured: CaptureQueriesContext) -> int:
    return sum('FROM "servers_mailserver"' in q["sql"] for q in captured.captured_queries)


def test_a_transaction_of_many_messages_reads_the_servers_once(
    make_server: Callable[..., MailServer],
) -> None:
    make_server()
    with CaptureQueriesContext(connection) as captured, transaction.atomic():
        for i in range(20):
            _send(to=[f"r{i}@example.org"])
    assert _server_queries(captured) == 1


def test_a_server_saved_or_deleted_in_this_process_is_seen_by_the_next_message(
    make_server: Callable[..., MailServer],
) -> None:
    first = make_server(name="first", priority=1)
    second = make_server(name="second", priority=2)
    assert _send().server == first
    first.active = False
    first.save()
    assert _send().server == second
    other = make_server(name="other domain", from_filter="other.example", priority=1)
    assert _send().server == second
    other.delete()
    assert _send(from_address="x@other.example").server == second
    third = make_server(name="third", priority=1)
    assert _send().server == third


def test_a_hold_and_a_release_are_seen_by_the_next_message(
    make_server: Callable[..., MailServer],
) -> None:
    server = make_server()
    assert _send().status == Status.QUEUED
    hold_server(MailServer.objects.get(pk=server.pk), "the grant was revoked")
    held = _send()
    assert (held.status, held.diagnosis) == (Status.HELD, "the grant was revoked")
    release_server(MailServer.objects.get(pk=server.pk))
    assert _send().status == Status.QUEUED


def test_another_processs_change_is_seen_once_the_cache_expires(
    make_server: Callable[..., MailServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(routing, "_clock", lambda: now[0])
    server = make_server()
    assert _send().server == server
    # A change without signals in this process, as another process's would be.
    MailServer.objects.filter(pk=server.pk).update(active=False)
    assert _send().server == server
    now[0] += routing.CACHE_SECONDS
    with pytest.raises(InvalidMessage, match="no active mail server"):
        _send()


@pytest.mark.django_db(transaction=True)
def test_a_new_transaction_reads_the_servers_again(make_server: Callable[..., MailServer]) -> None:
    server = make_server()
    with transaction.atomic():
        assert _send().server == server
    MailServer.objects.filter(pk=server.pk).update(smtp_host="")
    with transaction.atomic(), pytest.raises(InvalidMessage, match="no active mail server"):
        _send()
