"""Outbox search by recipient, subject or Message-ID; the server list shows host and Priority."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.sandbox.pages import when


def test_the_outbox_finds_messages_by_recipient_subject_or_message_id(
    admin_client: Client, make_server
) -> None:
    server = make_server(name="Relay", priority=7)
    OutgoingMessage.objects.create(
        server=server,
        from_address="a@x.example",
        to=["Zoe@Example.org"],
        subject="Invoice 17",
        message_id="<abc.1@x.example>",
        raw=b"x",
    )
    OutgoingMessage.objects.create(
        server=server,
        from_address="a@x.example",
        to=["bob@example.org"],
        subject="Hello",
        message_id="<def.2@x.example>",
        raw=b"x",
    )

    def found(query: str) -> list[str]:
        page = admin_client.get("/outbox/", {"q": query}).content.decode()
        return [s for s in ("Invoice 17", "Hello") if s in page]

    assert found("zoe@example") == ["Invoice 17"]
    assert found("invoice") == ["Invoice 17"]
    assert found("<def.2@x.example>") == ["Hello"]
    assert found("nobody") == []
    listing = admin_client.get("/settings/technical/mail-servers/").content.decode()
    assert f"127.0.0.1:{server.smtp_port}" in listing and '<td class="num">7</td>' in listing


def test_the_sandbox_shows_message_times_readably() -> None:
    assert when(1772442005.5) == "2026-03-02 09:00:05 UTC"
    assert when("") == ""


def test_outbox_retry_takes_many_ids_or_a_status(make_server) -> None:
    server = make_server()
    failed = [
        OutgoingMessage.objects.create(
            server=server, from_address="a@x.example", raw=b"x", status=Status.FAILED
        )
        for _ in range(3)
    ]
    out = StringIO()
    call_command("outbox", "retry", "--status", "failed", stdout=out)
    assert out.getvalue().splitlines() == [f"message {m.pk}: queued" for m in failed]
    call_command("outbox", "cancel", str(failed[0].pk), str(failed[1].pk), stdout=StringIO())
    assert OutgoingMessage.objects.filter(status=Status.CANCELLED).count() == 2
    with pytest.raises(CommandError, match="ids or --status, not both"):
        call_command("outbox", "retry", "1", "--status", "failed", stdout=StringIO())
