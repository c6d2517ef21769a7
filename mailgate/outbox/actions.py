"""Retry and Cancel, shared by the console, the CLI and the API."""

from __future__ import annotations

from django.db.models import Q
from django.utils import timezone

from mailgate.outbox.hold import is_held
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.outbox.wakeup import announce


class ActionRefused(Exception):
    """The message is not in a state that allows the action; the message says why."""


def _get(message_id: int) -> OutgoingMessage:
    message = OutgoingMessage.objects.select_related("server").filter(pk=message_id).first()
    if message is None:
        raise ActionRefused(f"no message with id {message_id}")
    return message


def retry_message(message_id: int) -> OutgoingMessage:
    """Queue a failed, cancelled or deferred message for sending now (same Message-ID)."""
    message = _get(message_id)
    if message.status == Status.HELD or is_held(message.server):
        raise ActionRefused(
            f"server {message.server.name!r} is held ({message.server.hold_reason or 'account problem'}): "
            "fix the server; its messages resume by themselves"
        )
    if message.purged_at is not None:
        raise ActionRefused(
            f"message {message.pk} was purged on {message.purged_at:%Y-%m-%d} "
            "(MAILGATE_RETENTION_DAYS): its content is gone, so it cannot be sent again"
        )
    allowed = (Status.FAILED, Status.CANCELLED, Status.DEFERRED)
    now = timezone.now()
    updated = OutgoingMessage.objects.filter(
        pk=message.pk, status__in=allowed, purged_at__isnull=True
    ).update(
        status=Status.QUEUED,
        next_attempt_at=now,
        created_at=now if message.status == Status.FAILED else message.created_at,
        retries=0,
        claimed_by="",
        claimed_until=None,
        updated_at=now,
    )
    if not updated:
        raise ActionRefused(
            f"message {message.pk} is {message.status}: only failed, cancelled or deferred "
            "messages can be retried"
        )
    announce()
    message.refresh_from_db()
    return message


def cancel_message(message_id: int) -> OutgoingMessage:
    """Cancel a message that is not being sent and not yet sent."""
    message = _get(message_id)
    now = timezone.now()
    updated = (
        OutgoingMessage.objects.filter(pk=message.pk)
        .filter(Q(status__in=(Status.QUEUED, Status.DEFERRED, Status.HELD)))
        .update(status=Status.CANCELLED, claimed_by="", claimed_until=None, updated_at=now)
    )
    if not updated:
        why = (
            "is being sent right now"
            if message.status == Status.SENDING
            else f"is {message.status}"
        )
        raise ActionRefused(f"message {message.pk} {why}: it cannot be cancelled")
    message.refresh_from_db()
    return message
