"""Mail queued for a server just after it was held (by a process whose server list was read before
the hold) is recorded as held by the worker's hold_step, and never after a release."""

from __future__ import annotations

import pytest

from mailgate.outbox.hold import hold_server, hold_step, release_server
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.servers.models import MailServer

pytestmark = pytest.mark.django_db

REASON = "Grant revoked (AADSTS50173): reconnect"


def _server(name: str) -> MailServer:
    return MailServer.objects.create(name=name, auth_method="password", smtp_host="127.0.0.1")


def _queued(server: MailServer, n: int) -> OutgoingMessage:
    return OutgoingMessage.objects.create(
        server=server, from_address="a@example.com", message_id=f"<{server.pk}.{n}@x>"
    )


def test_waiting_mail_of_a_held_server_is_recorded_held_and_other_servers_are_left_alone() -> None:
    held, fine = _server("held"), _server("fine")
    assert hold_step() is False  # nothing held: nothing to do
    hold_server(held, REASON)
    late = [_queued(held, n) for n in range(3)]  # queued by a process that had not seen the hold
    deferred = _queued(held, 3)
    OutgoingMessage.objects.filter(pk=deferred.pk).update(status=Status.DEFERRED)
    sent = _queued(held, 4)
    OutgoingMessage.objects.filter(pk=sent.pk).update(status=Status.SENT)
    other = _queued(fine, 0)
    assert hold_step() is True
    rows = dict(OutgoingMessage.objects.values_list("pk", "status"))
    assert [rows[m.pk] for m in [*late, deferred]] == [Status.HELD] * 4
    assert (rows[sent.pk], rows[other.pk]) == (Status.SENT, Status.QUEUED)
    assert set(
        OutgoingMessage.objects.filter(status=Status.HELD).values_list("diagnosis", flat=True)
    ) == {REASON}
    assert hold_step() is False  # once


def test_after_a_release_the_mail_stays_queued() -> None:
    server = _server("s")
    hold_server(server, REASON)
    message = _queued(server, 0)
    release_server(server)
    assert hold_step() is False
    assert OutgoingMessage.objects.get(pk=message.pk).status == Status.QUEUED
