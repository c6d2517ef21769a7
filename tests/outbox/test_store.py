"""submit.store(): the one-statement insert of a new message stores what Model.save() stores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db.models.signals import post_save

from mailgate.outbox.compose import MessageSpec
from mailgate.outbox.models import OutgoingMessage
from mailgate.outbox.submit import prepare, store
from mailgate.servers.models import MailServer

SPEC = MessageSpec(
    from_address="App <app@example.com>",
    to=["a@example.org", "B <b@example.org>"],
    cc=["c@example.org"],
    bcc=["d@example.org"],
    reply_to="help@example.com",
    subject="Grüße",
    text="hello",
)


def columns(message: OutgoingMessage) -> dict[str, Any]:
    row = OutgoingMessage.objects.get(pk=message.pk)
    values = {f.attname: getattr(row, f.attname) for f in OutgoingMessage._meta.concrete_fields}
    values.pop("id")
    values["raw"] = bytes(values["raw"])
    return values


def test_store_writes_the_row_save_writes(make_server: Callable[..., MailServer]) -> None:
    make_server(name="main")
    stored, saved = prepare(SPEC, source="api"), prepare(SPEC, source="api")
    saved.message_id = stored.message_id
    saved.raw = stored.raw
    store(stored)
    saved.save()
    assert stored.pk is not None and saved.pk == stored.pk + 1
    assert not stored._state.adding
    mine, theirs = columns(stored), columns(saved)
    for moment in ("created_at", "updated_at", "next_attempt_at"):
        assert abs((mine.pop(moment) - theirs.pop(moment)).total_seconds()) < 5
    assert mine == theirs
    assert mine["to"] == ["a@example.org", "b@example.org"] and mine["bcc"] == ["d@example.org"]
    assert stored.updated_at is not None  # auto_now set on the instance, as save() does
    # The instance behaves as a saved one: an update saves in place.
    stored.subject = "changed"
    stored.save(update_fields=["subject"])
    assert OutgoingMessage.objects.get(pk=stored.pk).subject == "changed"
    assert OutgoingMessage.objects.count() == 2


def test_store_is_save_while_a_receiver_listens(
    make_server: Callable[..., MailServer],
) -> None:
    make_server(name="main")
    heard: list[int] = []

    def receiver(sender: Any, instance: OutgoingMessage, created: bool, **kwargs: Any) -> None:
        heard.append(instance.pk)

    post_save.connect(receiver, sender=OutgoingMessage, dispatch_uid="test-store")
    try:
        message = prepare(SPEC, source="api")
        store(message)
    finally:
        post_save.disconnect(dispatch_uid="test-store", sender=OutgoingMessage)
    assert heard == [message.pk]


@pytest.mark.parametrize("key", [None, "k-1"])
def test_enqueue_answers_the_stored_row(
    make_server: Callable[..., MailServer], key: str | None
) -> None:
    from mailgate.outbox.submit import enqueue

    make_server(name="main")
    message = enqueue(SPEC, idempotency_key=key, source="api")
    row = OutgoingMessage.objects.get(pk=message.pk)
    assert (row.message_id, row.to, row.idempotency_key) == (message.message_id, message.to, key)
    if key:
        again = enqueue(SPEC, idempotency_key=key, source="api")
        assert again.pk == message.pk and again.idempotent_replay
