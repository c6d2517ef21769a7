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
                    raw=_raw(message),
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


# The headers Django writes from the message's fields (unless extra_headers names them).
_ADDRESS_FIELDS = (("From", "from_email"), ("To", "to"), ("Cc", "cc"), ("Reply-To", "reply_to"))


def _non_ascii_local_part(value: str) -> bool:
    local = value.rpartition("<")[2].rpartition("@")[0] if "@" in value else ""
    return not local.isascii()


def _raw(message: EmailMessage) -> bytes:
    """The message's bytes. Django writes a non-ASCII local part as an RFC 2047 word
    (`=?utf-8?b?...?=@corp.local`), which no server can deliver to; such a message is an
    internationalised one (RFC 6532), so its address headers are written in UTF-8 instead."""
    built = message.message()  # refuses line breaks in headers (BadHeaderError) before anything
    own = {name.lower() for name in message.extra_headers}
    fields: list[tuple[str, list[str]]] = []
    for header, attribute in _ADDRESS_FIELDS:
        value = getattr(message, attribute)
        values = [value] if isinstance(value, str) else list(value or ())
        if values and header.lower() not in own:
            fields.append((header, values))
    if not any(_non_ascii_local_part(v) for _, values in fields for v in values):
        return built.as_bytes()
    for header, _ in fields:
        del built[header]
    data = built.as_bytes()
    end = "\r\n" if b"\r\n" in data else "\n"  # the line ends Django wrote
    head = "".join(f"{header}: {', '.join(values)}{end}" for header, values in fields)
    return head.encode() + data
