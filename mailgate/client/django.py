"""A Django email backend for another Django project that sends through a mailgate elsewhere.

    EMAIL_BACKEND = "mailgate.client.django.EmailBackend"
    MAILGATE_URL = "https://mailgate.corp.local"
    MAILGATE_API_KEY = "..."          # `mailgate api-keys create --name erp --scope send`

Every message goes to POST /api/v1/messages with an Idempotency-Key of its own, so a retried
send_messages() after a lost answer queues each message once. Alternatives (HTML) and attachments
are sent as fields; a message that carries what the fields cannot say (a multipart/related
attachment, several alternatives) is sent whole as `raw`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from email.mime.base import MIMEBase
from typing import Any

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage

from mailgate.client import Attachment, Client, MailgateError

# Headers the API builds itself from the fields; others are passed on as given.
BUILT_HEADERS = {"from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id"}


class EmailBackend(BaseEmailBackend):
    """Queues each message with mailgate's REST API (MAILGATE_URL, MAILGATE_API_KEY)."""

    def __init__(self, fail_silently: bool = False, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently)
        self.url = kwargs.get("url") or getattr(settings, "MAILGATE_URL", "")
        self.api_key = kwargs.get("api_key") or getattr(settings, "MAILGATE_API_KEY", "")
        timeout: Any = kwargs.get("timeout") or getattr(settings, "MAILGATE_TIMEOUT", 30.0)
        self.timeout = float(timeout)
        self.verify = kwargs.get("verify", getattr(settings, "MAILGATE_VERIFY", True))
        self.client: Client | None = None

    def open(self) -> bool:
        if self.client is not None:
            return False
        self.client = Client(self.url, self.api_key, timeout=self.timeout, verify=self.verify)
        return True

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        if not email_messages:
            return 0
        opened = self.open()
        assert self.client is not None
        sent = 0
        try:
            for message in email_messages:
                try:
                    self.client.send(**fields_of(message), idempotency_key=str(uuid.uuid4()))
                except (MailgateError, OSError, ValueError):
                    if not self.fail_silently:
                        raise
                else:
                    sent += 1
        finally:
            if opened:
                self.close()
        return sent


def _as_text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


# The address headers Django writes from the message's fields (unless extra_headers names them).
_ADDRESS_FIELDS = (("From", "from_email"), ("To", "to"), ("Cc", "cc"), ("Reply-To", "reply_to"))


def _raw(message: EmailMessage) -> bytes:
    """The whole message with CRLF line ends. Django writes a non-ASCII local part as an RFC 2047
    word (`=?utf-8?b?...?=@corp.local`), an address no server delivers to; such a message is an
    internationalised one (RFC 6532), so its address headers are written in UTF-8 instead.

    (mailgate's in-process backend does the same; this package imports nothing of mailgate's
    server side, so that an application installs it alone.)"""
    built = message.message()
    own = {name.lower() for name in message.extra_headers}
    fields: list[tuple[str, list[str]]] = []
    for header, attribute in _ADDRESS_FIELDS:
        value = getattr(message, attribute)
        values = [value] if isinstance(value, str) else list(value or ())
        if values and header.lower() not in own:
            fields.append((header, values))

    def non_ascii_local_part(value: str) -> bool:
        return "@" in value and not value.rpartition("<")[2].rpartition("@")[0].isascii()

    if any(non_ascii_local_part(v) for _, values in fields for v in values):
        for header, _ in fields:
            del built[header]
        head = "".join(f"{header}: {', '.join(values)}\r\n" for header, values in fields)
        return head.encode() + built.as_bytes(linesep="\r\n")  # type: ignore[call-arg]
    return built.as_bytes(linesep="\r\n")  # type: ignore[call-arg]


def fields_of(message: EmailMessage) -> dict[str, Any]:
    """The API fields for a Django message, or the whole message as `raw` when fields cannot say it."""
    recipients = {"to": list(message.to), "cc": list(message.cc), "bcc": list(message.bcc)}
    alternatives = list(getattr(message, "alternatives", []) or [])
    html_parts = [a for a in alternatives if a[1] == "text/html"]
    simple = (
        len(alternatives) == len(html_parts) <= 1
        and message.content_subtype in ("plain", "html")
        and all(not isinstance(a, MIMEBase) for a in message.attachments)
    )
    if not simple:
        return {"raw": _raw(message), "sender": message.from_email, **recipients}
    body = str(message.body)
    text, html = (None, body) if message.content_subtype == "html" else (body, None)
    if html_parts:
        html = _as_text(html_parts[0][0])
    headers = {
        k: str(v) for k, v in message.extra_headers.items() if k.lower() not in BUILT_HEADERS
    }
    attachments = []
    for item in message.attachments:
        filename, content, mimetype = item  # a MIMEBase was sent as raw above
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        attachments.append(
            Attachment(filename or "attachment", data, mimetype or "application/octet-stream")
        )
    return {
        "sender": message.from_email,
        **recipients,
        "reply_to": ", ".join(message.reply_to) or None,
        "subject": message.subject,
        "text": text,
        "html": html,
        "headers": headers,
        "attachments": attachments,
    }


__all__ = ["EmailBackend", "fields_of"]
