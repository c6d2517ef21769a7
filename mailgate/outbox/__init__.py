"""The outbox: a durable queue of outgoing mail, its worker, and the ways applications send mail."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailgate.outbox.models import OutgoingMessage


def enqueue(*args: Any, **kwargs: Any) -> OutgoingMessage:
    """Queue one message inside the caller's transaction (see mailgate.outbox.submit.enqueue)."""
    from mailgate.outbox.submit import enqueue as _enqueue

    return _enqueue(*args, **kwargs)
