"""Storing a fetched message durably, exactly once, and reading it back.

A message is committed (its row, with the bytes inline or in a file named by their SHA-256 under
MAILGATE_HOME/inbox) together with the cursor that says it was taken, before the server is told
anything; a kill at any moment then loses nothing and a restart stores nothing twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from mailgate.inbox.models import (
    FolderCursor,
    InboxSequence,
    IncomingMessage,
    RemoteAction,
)
from mailgate.servers.models import MailServer

# Messages larger than this are fetched in pieces straight into a file, and kept there.
FILE_BYTES = int(os.environ.get("MAILGATE_INBOX_FILE_BYTES") or 1024 * 1024)
STORE_DIR = "inbox"


@dataclass
class Fetched:
    """One message as it came from the server: inline bytes or a file already in its final place."""

    size: int
    sha256: str
    data: bytes | None = None
    raw_file: str = ""  # relative to MAILGATE_HOME
    folder: str = ""
    uidvalidity: int | None = None
    uid: int | None = None
    uidl: str = ""

    @classmethod
    def from_bytes(cls, data: bytes, **where: Any) -> Fetched:
        return cls(len(data), hashlib.sha256(data).hexdigest(), data=data, **where)


def home() -> Path:
    return Path(settings.MAILGATE_HOME)


class Spool:
    """A temporary file under MAILGATE_HOME/inbox/tmp that hashes and counts what is written."""

    def __init__(self, path: Path, out: BinaryIO) -> None:
        self.path = path
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)


@contextlib.contextmanager
def spool() -> Iterator[Spool]:
    """Stream one message into a temporary file; it is flushed to disk when the block ends."""
    tmp_dir = home() / STORE_DIR / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield Spool(Path(name), fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def keep(spooled: Spool, **where: Any) -> Fetched:
    """Move a spooled message to inbox/<aa>/<sha256>.eml (durably, before its row is committed:
    a kill in between leaves a file that the retry overwrites with the same bytes)."""
    digest = spooled.hash.hexdigest()
    relative = Path(STORE_DIR) / digest[:2] / f"{digest}.eml"
    final = home() / relative
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(spooled.path, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return Fetched(spooled.size, digest, raw_file=str(relative), **where)


def next_sequence(count: int) -> int:
    """Reserve `count` arrival numbers inside the caller's transaction; return the first.

    The row stays locked until the caller commits, so numbers become visible in order."""
    InboxSequence.objects.get_or_create(pk=1)
    row = InboxSequence.objects.select_for_update().get(pk=1)
    first = row.value + 1
    row.value += count
    row.save(update_fields=["value"])
    return first


def store(
    server: MailServer,
    items: list[Fetched],
    *,
    cursor: FolderCursor | None = None,
    remote_pending: bool = False,
) -> list[IncomingMessage]:
    """Commit the messages (and move the folder's cursor past them) in one transaction."""
    if not items:
        return []
    rows = [_row(server, item, remote_pending) for item in items]
    with transaction.atomic():
        first = next_sequence(len(rows))
        for i, row in enumerate(rows):
            row.seq = first + i
        IncomingMessage.objects.bulk_create(rows)
        if cursor is not None:
            highest = max(item.uid or 0 for item in items)
            if highest > cursor.last_uid:
                cursor.last_uid = highest
                FolderCursor.objects.filter(pk=cursor.pk).update(last_uid=highest)
    return rows


def _row(server: MailServer, item: Fetched, remote_pending: bool) -> IncomingMessage:
    fields = parse_summary(item)
    return IncomingMessage(
        server=server,
        folder=item.folder,
        uidvalidity=item.uidvalidity,
        uid=item.uid,
        uidl=item.uidl,
        size=item.size,
        sha256=item.sha256,
        raw=item.data if not item.raw_file else None,
        raw_file=item.raw_file,
        remote_action=RemoteAction.PENDING if remote_pending else RemoteAction.NONE,
        received_at=timezone.now(),
        **fields,
    )


# -- parsing (best effort: a message that does not parse is stored raw all the same) ----------


def parse(raw: bytes | BinaryIO) -> EmailMessage:
    parser = BytesParser(policy=policy.default)
    message = parser.parsebytes(raw) if isinstance(raw, bytes) else parser.parse(raw)
    assert isinstance(message, EmailMessage)
    return message


def open_message(message: IncomingMessage) -> EmailMessage:
    path = message.raw_path()
    if path is not None:
        with path.open("rb") as fh:
            return parse(fh)
    return parse(bytes(message.raw or b""))


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
        return " ".join(str(value).split()) if value is not None else ""
    except Exception:  # a malformed header: fall back to its raw text
        raw = message.get_all(name, failobj=[]) if hasattr(message, "get_all") else []
        return " ".join(str(raw[0]).split()) if raw else ""


def _addresses(message: Message, name: str) -> list[str]:
    try:
        values = message.get_all(name, [])
        pairs = email.utils.getaddresses([str(v) for v in values])
    except Exception:
        return []
    return [address for _, address in pairs if address]


def attachment_parts(message: EmailMessage) -> list[Message]:
    """The message's attachments in order (parts with a filename or disposition attachment)."""
    parts: list[Message] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        disposition = part.get_content_disposition()
        if disposition == "attachment" or (disposition != "attachment" and part.get_filename()):
            parts.append(part)
    return parts


def attachment_payload(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def parse_summary(item: Fetched) -> dict[str, Any]:
    """From, To, Cc, Subject, Date, Message-ID and the attachments' names, types and sizes."""
    try:
        if item.raw_file:
            with (home() / item.raw_file).open("rb") as fh:
                message = parse(fh)
        else:
            message = parse(item.data or b"")
    except Exception as exc:
        return {"parse_error": f"the message could not be parsed: {exc}"}
    fields: dict[str, Any] = {"parse_error": ""}
    problems = [str(d) for d in getattr(message, "defects", [])]
    fields["message_id"] = _header(message, "Message-ID")[:998]
    senders = _addresses(message, "From")
    fields["sender"] = (senders[0] if senders else _header(message, "From"))[:998]
    fields["to"] = _addresses(message, "To")
    fields["cc"] = _addresses(message, "Cc")
    fields["subject"] = _header(message, "Subject")
    try:
        date = email.utils.parsedate_to_datetime(_header(message, "Date"))
        fields["date"] = date if date.tzinfo else date.replace(tzinfo=dt.UTC)
    except (TypeError, ValueError, IndexError):
        fields["date"] = None
    attachments = []
    try:
        for part in attachment_parts(message):
            attachments.append(
                {
                    "filename": part.get_filename() or "",
                    "content_type": part.get_content_type(),
                    "size": len(attachment_payload(part)),
                }
            )
    except Exception as exc:
        problems.append(f"attachments: {exc}")
    fields["attachments"] = attachments
    if problems:
        fields["parse_error"] = "; ".join(problems)[:2000]
    return fields


@dataclass
class Contents:
    """What a reader needs of a stored message: headers in order, the text and HTML bodies."""

    headers: list[tuple[str, str]]
    text: str | None
    html: str | None


def _body(message: EmailMessage, kind: str) -> str | None:
    try:
        part = message.get_body(preferencelist=(kind,))
        if part is None or part.get_content_type() != f"text/{kind}":
            return None
        content = part.get_content()
        return content if isinstance(content, str) else None
    except Exception:  # an unknown charset or a broken part: best effort, never an error
        try:
            payload = part.get_payload(decode=True) if part is not None else None
        except Exception:
            return None
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None


def contents(stored: IncomingMessage) -> Contents:
    message = open_message(stored)
    headers: list[tuple[str, str]] = []
    for name, raw in message.raw_items():
        try:
            value = str(message.policy.header_fetch_parse(name, raw))
        except Exception:  # an undecodable header is shown as it came
            value = str(raw)
        headers.append((name, " ".join(value.split())))
    return Contents(headers, _body(message, "plain"), _body(message, "html"))


def attachment(stored: IncomingMessage, n: int) -> tuple[str, str, bytes] | None:
    """The n-th attachment (0-based, the order of `attachments`): filename, type, bytes."""
    parts = attachment_parts(open_message(stored))
    if not 0 <= n < len(parts):
        return None
    part = parts[n]
    return (
        part.get_filename() or f"attachment-{n}",
        part.get_content_type(),
        attachment_payload(part),
    )
