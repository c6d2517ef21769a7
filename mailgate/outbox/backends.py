"""`EMAIL_BACKEND = "mailgate.outbox.backends.EmailBackend"`: Django's send_mail() queues into the outbox."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage

from mailgate.outbox.compose import InvalidMessage


class EmailBackend(BaseEmailBackend):
    """Enqueues each message (in the caller's transaction); the worker delivers it later."""

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        from mailgate.outbox.submit import enqueue

        queued = 0
        for message in email_messages:
            if not message.recipients():
                continue
            try:
                enqueue(
                    raw=message.message().as_bytes(),
                    from_address=message.from_email,
                    to=list(message.to),
                    cc=list(message.cc),
                    bcc=list(message.bcc),
                    source="django",
                )
            except InvalidMessage:
                if not self.fail_silently:
                    raise
                continue
            queued += 1
        return queued

    def __init__(self, fail_silently: bool = False, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
