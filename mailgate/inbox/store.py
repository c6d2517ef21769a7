"""Storing a fetched message durably, exactly once, and reading it back.

A message is committed (its row, with the bytes inline or in a file named by their SHA-256 under
MAILGATE_HOME/inbox) together with the cursor that says it was taken, before the server is told
anything; a kill at any moment then loses nothing and a restart stores nothing twice.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import hashlib
import itertools
import logging
import os
import re
import sqlite3
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.db import OperationalError, connections, models, router, transaction
from django.utils import timezone

from mailgate.conf import parse_int
from mailgate.inbox.models import (
    FolderCursor,
    InboxSequence,
    IncomingMessage,
    RemoteAction,
)
from mailgate.servers.models import MailServer

log = logging.getLogger("mailgate.inbox")

# Messages larger than this are fetched in pieces straight into a file, and kept there.
FILE_BYTES = parse_int(
    "MAILGATE_INBOX_FILE_BYTES",
    os.environ.get("MAILGATE_INBOX_FILE_BYTES", ""),
    1024 * 1024,
    1024,
    2**40,
)
# A batch of at least this many messages is written as one pack file (the messages one after the
# other, each row naming its offset) instead of into the database: one write and one sync for the
# batch instead of a database page write per 4 KB. Smaller batches (POP3, a trickle of new mail)
# stay in the database.
PACK_MIN = parse_int(
    "MAILGATE_INBOX_PACK_MIN", os.environ.get("MAILGATE_INBOX_PACK_MIN", ""), 8, 1, 100_000
)
STORE_DIR = "inbox"
PACK_DIR = "packs"


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
    offset: int | None = None  # where the message starts in `raw_file` (a pack of several)

    @classmethod
    def from_bytes(cls, data: bytes, **where: Any) -> Fetched:
        return cls(len(data), hashlib.sha256(data).hexdigest(), data=data, **where)

    @classmethod
    def unhashed(cls, data: bytes, **where: Any) -> Fetched:
        """A message whose SHA-256 is left to the parse (parse_pending), like its header fields:
        a batch's fetch commits the bytes without that CPU on its way."""
        return cls(len(data), "", data=data, **where)


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


BULK_CHECKPOINT_PAGES = 16384  # SQLite WAL pages (64 MiB of 4 KiB pages) between checkpoints


@contextlib.contextmanager
def bulk_writes() -> Iterator[None]:
    """While one fetch commits batch after batch: on SQLite, checkpoint the write-ahead log once
    at the end rather than every 1,000 pages (4 MB, SQLite's default), since each checkpoint
    syncs the disk twice and a fetch writes every message's bytes. Commits stay as they are (each
    batch is committed before the server is told anything). Nothing changes on PostgreSQL."""
    connection = connections[router.db_for_write(IncomingMessage)]
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        wal = str(cursor.fetchone()[0]).lower() == "wal"
        if wal:
            cursor.execute("PRAGMA wal_autocheckpoint")
            before = int(cursor.fetchone()[0])
            cursor.execute(f"PRAGMA wal_autocheckpoint={BULK_CHECKPOINT_PAGES}")
    if not wal:
        yield
        return
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA wal_autocheckpoint={before}")
            # A reader or writer elsewhere makes a passive checkpoint stop early (or SQLite
            # answer "locked"); the next commit's automatic checkpoint finishes the work.
            with contextlib.suppress(OperationalError):
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")


def next_sequence(count: int) -> int:
    """Reserve `count` arrival numbers inside the caller's transaction; return the first.

    The row stays locked until the caller commits, so numbers become visible in order. One
    `UPDATE ... RETURNING` (PostgreSQL, SQLite 3.35+) takes the lock and the numbers at once."""
    connection = connections[router.db_for_write(InboxSequence)]
    quote, meta = connection.ops.quote_name, InboxSequence._meta
    table, key = quote(meta.db_table), quote(str(meta.pk.column))
    value = quote(str(meta.get_field("value").column))
    sql = f"UPDATE {table} SET {value} = {value} + %s WHERE {key} = 1 RETURNING {value}"  # noqa: S608
    with connection.cursor() as cursor:
        for _ in range(2):
            cursor.execute(sql, [count])
            row = cursor.fetchone()
            if row is not None:
                return int(row[0]) - count + 1
            InboxSequence.objects.get_or_create(pk=1)  # the first message ever
    raise RuntimeError("the inbox sequence row cannot be created")


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Pack:
    """One file under MAILGATE_HOME/inbox/packs/<year-month> that a fetch appends its batches to
    (`add`), each synced to disk before its rows are committed. A kill in between leaves bytes
    that no row points at; those messages are fetched again into the next pack."""

    def __init__(self) -> None:
        self.relative: Path | None = None
        self.fd: int | None = None
        self.size = 0

    def _open(self) -> int:
        relative = Path(STORE_DIR) / PACK_DIR / timezone.now().strftime("%Y-%m")
        folder = home() / relative
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.pack"
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        _sync_dir(folder)  # the file's name is durable before any row names it
        self.relative, self.fd, self.size = relative / name, fd, 0
        return fd

    def add(self, items: list[Fetched]) -> list[Fetched]:
        """Append the inline messages of a batch of at least PACK_MIN (others are left as they
        are) and sync; the items then point at the pack."""
        inline = [item for item in items if item.data is not None and not item.raw_file]
        if len(inline) < PACK_MIN:
            return items
        fd = self.fd if self.fd is not None else self._open()
        chunks = [memoryview(item.data or b"") for item in inline]
        for start in range(0, len(chunks), 512):  # within every system's IOV_MAX (1024)
            group = chunks[start : start + 512]
            written = os.writev(fd, group)
            total = sum(len(c) for c in group)
            if written < total:  # a short write (rare on a regular file): finish it plainly
                rest = b"".join(bytes(c) for c in group)[written:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
        os.fdatasync(fd)
        for item in inline:
            item.raw_file, item.offset = str(self.relative), self.size
            self.size += item.size
            item.data = None
        return items

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Pack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def store(
    server: MailServer,
    items: list[Fetched],
    *,
    cursor: FolderCursor | None = None,
    remote_pending: bool = False,
    pack: Pack | None = None,
) -> list[Stored]:
    """Commit the messages (and move the folder's cursor past them) in one transaction; a batch
    of PACK_MIN or more is first appended to `pack` (or a pack of its own)."""
    if not items:
        return []
    if pack is None:
        with Pack() as own:
            items = own.add(items)
    else:
        items = pack.add(items)
    rows = [_row(item) for item in items]
    batch = {
        "server_id": server.pk,
        "remote_action": RemoteAction.PENDING if remote_pending else RemoteAction.NONE,
        "received_at": timezone.now(),
        "parsed": False,
    }
    with transaction.atomic():
        first = next_sequence(len(rows))
        for i, row in enumerate(rows):
            row["seq"] = first + i
        _insert(batch, rows)
        if cursor is not None:
            highest = max(item.uid or 0 for item in items)
            if highest > cursor.last_uid:
                cursor.last_uid = highest
                FolderCursor.objects.filter(pk=cursor.pk).update(last_uid=highest)
    return [Stored(row["seq"], row["uid"]) for row in rows]


@dataclass(frozen=True)
class Stored:
    """A committed message: its arrival number (unique) and its UID (IMAP)."""

    seq: int
    uid: int | None


# Values of these field types go to the database as they are (no per-value conversion).
_AS_IS = (
    models.CharField,
    models.TextField,
    models.IntegerField,
    models.BooleanField,
    models.BinaryField,  # bytes, which both database drivers take as they are
)


def _insert(batch: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """INSERT the rows with one executemany: what bulk_create does, without model instances and
    its per-value machinery (they cost more than parsing the messages). Each row gives its own
    values by attribute name; `batch` those shared by the batch; the rest are the fields'
    defaults. Only the JSON, date and binary values are converted for the database."""
    meta = IncomingMessage._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    connection = connections[router.db_for_write(IncomingMessage)]
    quote = connection.ops.quote_name
    head = "INSERT INTO {} ({}) VALUES ".format(  # noqa: S608 (the model's quoted names)
        quote(str(meta.db_table)), ", ".join(quote(str(f.column)) for f in fields)
    )
    row_marks = "({})".format(", ".join(["%s"] * len(fields)))

    def prepared(field: models.Field[Any, Any], value: Any) -> Any:
        if value is None or isinstance(field, _AS_IS):
            return value
        return field.get_db_prep_save(value, connection=connection)

    shared = [
        prepared(f, batch[f.attname] if f.attname in batch else f.get_default()) for f in fields
    ]
    own = [(i, f) for i, f in enumerate(fields) if f.attname in rows[0]]
    as_is = [(i, f.attname) for i, f in own if isinstance(f, _AS_IS)]
    converted = [(i, f) for i, f in own if not isinstance(f, _AS_IS)]
    params = []
    for row in rows:
        values = list(shared)
        for i, name in as_is:
            values[i] = row[name]
        for i, f in converted:
            values[i] = prepared(f, row[f.attname])
        params.append(values)
    # One statement of many rows rather than executemany: SQLite's driver lets other threads run
    # around each row's step, and the fetch's download thread, which wants the interpreter back
    # after every read, made each of those hand-overs slow (a batch took twice as long as alone).
    rows_per_statement = max(1, _max_parameters(connection) // len(fields))
    with connection.cursor() as cursor:
        # mailgate's SQLite backend runs a statement written with "?" as it is (see execute_qmark).
        qmark = getattr(cursor.cursor, "execute_qmark", None)
        for start in range(0, len(params), rows_per_statement):
            chunk = params[start : start + rows_per_statement]
            flat = list(itertools.chain.from_iterable(chunk))
            if qmark is None:
                cursor.execute(head + ", ".join([row_marks] * len(chunk)), flat)
                continue
            sql = head + ", ".join([row_marks.replace("%s", "?")] * len(chunk))
            with connection.wrap_database_errors:
                qmark(sql, flat)


def _max_parameters(connection: Any) -> int:
    """How many parameters one statement may carry on this database."""
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        limit: int = connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        return limit
    return 65535  # PostgreSQL's protocol counts them in 16 bits


def _row(item: Fetched) -> dict[str, Any]:
    """A message's own column values (by attribute name): where it came from and its bytes.
    Nothing is parsed here (see parse_pending): the fetch commits the exact bytes first."""
    return {
        "folder": item.folder,
        "uidvalidity": item.uidvalidity,
        "uid": item.uid,
        "uidl": item.uidl,
        "size": item.size,
        "sha256": item.sha256,
        "raw": item.data if not item.raw_file else None,
        "raw_file": item.raw_file,
        "raw_offset": item.offset,
        "seq": 0,
    }


_EMPTY_SUMMARY: dict[str, Any] = {
    "message_id": "",
    "sender": "",
    "to": [],
    "cc": [],
    "subject": "",
    "date": None,
    "attachments": [],
    "parse_error": "",
}
SUMMARY_FIELDS = list(_EMPTY_SUMMARY)
PARSE_BATCH = 500  # messages parsed and updated per transaction
PARSE_ROUNDS = 1000  # bounds one parse_pending call


def _summary_fields(item: Fetched) -> dict[str, Any]:
    """parse_summary's fields, each present (a header that did not parse leaves them empty)."""
    try:
        found = parse_summary(item)
    except Exception as exc:  # best effort: a message that does not parse stays stored raw
        found = {"parse_error": f"the message could not be parsed: {exc}"[:2000]}
    return {**_EMPTY_SUMMARY, **found}


def _as_fetched(message: IncomingMessage) -> Fetched:
    path = message.raw_path()
    if path is not None:  # a message of its own file: parsed from the file
        return Fetched(message.size, message.sha256, raw_file=message.raw_file)
    return Fetched(message.size, message.sha256, data=message.raw_bytes())


def _apply_summary(message: IncomingMessage) -> None:
    item = _as_fetched(message)
    if not message.sha256 and item.data is not None:  # a batch's message (Fetched.unhashed)
        message.sha256 = hashlib.sha256(item.data).hexdigest()
    for name, value in _summary_fields(item).items():
        setattr(message, name, value)
    message.parsed = True


def parse_pending(*, server: MailServer | None = None, rounds: int = PARSE_ROUNDS) -> int:
    """Parse the header fields (From, To, Subject, attachments...) of stored messages that the
    fetch committed as bytes alone, oldest first, in bulk; return how many were parsed.

    Parsing is deterministic, so two processes parsing one message write the same values."""
    rows = IncomingMessage.objects.filter(parsed=False).order_by("seq")
    if server is not None:
        rows = rows.filter(server=server)
    done = 0
    for _ in range(rounds):
        batch = list(
            rows.only("pk", "seq", "size", "sha256", "raw", "raw_file", "raw_offset")[:PARSE_BATCH]
        )
        if not batch:
            break
        for message in batch:
            _apply_summary(message)
        _save_summaries(batch)
        done += len(batch)
    return done


def _save_summaries(messages: list[IncomingMessage]) -> None:
    """UPDATE the parsed fields with one executemany (bulk_update's CASE per field and row costs
    far more than the parse on SQLite)."""
    meta = IncomingMessage._meta
    names = {*SUMMARY_FIELDS, "parsed", "sha256"}
    fields = [f for f in meta.concrete_fields if f.name in names]
    connection = connections[router.db_for_write(IncomingMessage)]
    quote = connection.ops.quote_name
    sql = "UPDATE {} SET {} WHERE {} = %s".format(  # noqa: S608 (the model's quoted names)
        quote(str(meta.db_table)),
        ", ".join(f"{quote(str(f.column))} = %s" for f in fields),
        quote(str(meta.pk.column)),
    )
    params = [
        [f.get_db_prep_save(getattr(m, f.attname), connection=connection) for f in fields] + [m.pk]
        for m in messages
    ]
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.executemany(sql, params)


def ensure_parsed(message: IncomingMessage) -> IncomingMessage:
    """Parse one message now if the hand-off has not yet (a reader came first)."""
    if not message.parsed:
        _apply_summary(message)
        message.save(update_fields=[*SUMMARY_FIELDS, "parsed", "sha256"])
    return message


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
    return parse(message.raw_bytes())


def attachment_parts(message: Message) -> list[Message]:
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


HEAD_LIMIT = 256 * 1024  # bytes read to find the header of a message kept in a file


def _head(item: Fetched) -> bytes:
    """The header block (up to the first empty line) of the fetched bytes."""
    if item.raw_file:
        with (home() / item.raw_file).open("rb") as fh:
            data = fh.read(HEAD_LIMIT)
    else:
        data = (item.data or b"")[:HEAD_LIMIT]
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = data.find(separator)
        if end >= 0:
            return data[: end + len(separator)]
    return data


_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+")
_FIELD_BREAK = re.compile(r"\r?\n(?![ \t])")
_FIELD_NAME = re.compile(r"[!-9;-~]+")


class _Header:
    """The header fields of a plain ASCII header block, split without the email package (which
    costs more than the rest of storing a message); None from `of` when the block is not plain
    (non-ASCII, a line that is not a field...): the email package parses that one."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields
        self.defects: list[Any] = []

    @classmethod
    def of(cls, head: bytes) -> _Header | None:
        if not head.isascii():
            return None
        fields: dict[str, list[str]] = {}
        for line in _FIELD_BREAK.split(head.decode("ascii").rstrip("\r\n")):
            name, colon, value = line.partition(":")
            if not colon or not _FIELD_NAME.fullmatch(name):
                return None
            fields.setdefault(name.lower(), []).append(value.lstrip(" \t"))
        return cls(fields)

    def get(self, name: str, default: Any = None) -> Any:
        found = self.fields.get(name.lower())
        return found[0] if found else default

    def get_all(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name.lower(), default)

    def get_content_maintype(self) -> str:
        kind = str(self.get("Content-Type", "")).split(";")[0].strip().lower()
        return kind.partition("/")[0] if kind.count("/") == 1 else "text"


def _decoded(value: Any) -> str:
    """A header value with RFC 2047 encoded words decoded, whitespace folded."""
    if value is None:
        return ""
    text = str(value)
    if "=?" in text or not text.isascii():
        # An unknown charset or a broken encoded word: shown as it came.
        with contextlib.suppress(Exception):
            text = str(make_header(decode_header(text)))
    return " ".join(text.split())


def _address_list(header: Message | _Header, name: str) -> list[str]:
    values = header.get_all(name, [])
    if len(values) == 1 and _PLAIN_ADDRESS.fullmatch(plain := str(values[0]).strip()):
        return [plain]  # what getaddresses gives for a bare address, at a tenth of its cost
    try:
        pairs = email.utils.getaddresses([str(v) for v in values])
    except Exception:
        return []
    return [address for _, address in pairs if address and "@" in address]


def parse_summary(item: Fetched) -> dict[str, Any]:
    """From, To, Cc, Subject, Date, Message-ID and the attachments' names, types and sizes.

    The header block alone is parsed (split directly when it is plain ASCII, else by the compat32
    parser, several times faster than the modern policy's); only a multipart message, or one that
    names a disposition, is parsed whole for its attachments. Best effort: whatever does not parse
    is left empty and noted in parse_error."""
    problems: list[str] = []
    head = _head(item)
    header: Message | _Header | None = _Header.of(head)
    if header is None:
        try:
            header = BytesHeaderParser(policy=compat32).parsebytes(head)
        except Exception as exc:
            return {"parse_error": f"the header could not be parsed: {exc}"}
    problems.extend(str(d) for d in header.defects)
    fields: dict[str, Any] = {
        "message_id": " ".join(str(header.get("Message-ID", "")).split())[:998],
        "to": _address_list(header, "To"),
        "cc": _address_list(header, "Cc"),
        "subject": _decoded(header.get("Subject")),
    }
    senders = _address_list(header, "From")
    fields["sender"] = (senders[0] if senders else _decoded(header.get("From")))[:998]
    try:
        date = email.utils.parsedate_to_datetime(str(header.get("Date", "")))
        fields["date"] = date if date.tzinfo else date.replace(tzinfo=dt.UTC)
    except (TypeError, ValueError, IndexError):
        fields["date"] = None
        if header.get("Date") is not None:
            problems.append(f"Date: {str(header.get('Date'))[:100]!r} is not a date")
    fields["attachments"] = []
    if header.get_content_maintype() == "multipart" or header.get("Content-Disposition"):
        try:
            fields["attachments"] = _attachment_summary(item)
        except Exception as exc:
            problems.append(f"attachments: {exc}")
    fields["parse_error"] = "; ".join(problems)[:2000]
    return fields


def _attachment_summary(item: Fetched) -> list[dict[str, Any]]:
    parser = BytesParser(policy=compat32)
    if item.raw_file:
        with (home() / item.raw_file).open("rb") as fh:
            message = parser.parse(fh)
    else:
        message = parser.parsebytes(item.data or b"")
    return [
        {
            "filename": _decoded(part.get_filename() or ""),
            "content_type": part.get_content_type(),
            "size": len(attachment_payload(part)),
        }
        for part in attachment_parts(message)
    ]


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


# Inline images (multipart/related parts named by a Content-ID) shown in the HTML view: raster
# types a browser decodes without running anything, up to this many bytes in all.
INLINE_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"}
INLINE_IMAGE_BYTES = 10 * 1024 * 1024
_CID = re.compile(r"""cid:([^"'\s)>]+)""", re.IGNORECASE)


def html_with_inline_images(stored: IncomingMessage) -> str | None:
    """The HTML body with each `cid:` reference (RFC 2392) to an image part of the message
    replaced by a data: URL of that image, so the view shows a logo or a signature without
    loading anything from elsewhere; a reference to nothing (or past the size bound) is left."""
    message = open_message(stored)
    html = _body(message, "html")
    if html is None or "cid:" not in html.lower():
        return html
    images: dict[str, str] = {}
    budget = INLINE_IMAGE_BYTES
    for part in message.walk():
        content_id = str(part.get("Content-ID", "")).strip().strip("<>").strip()
        if not content_id or part.get_content_type() not in INLINE_IMAGE_TYPES:
            continue
        data = part.get_payload(decode=True)  # a broken encoding decodes best effort
        if not isinstance(data, bytes) or len(data) > budget:
            continue
        budget -= len(data)
        encoded = base64.b64encode(data).decode("ascii")
        images[content_id] = f"data:{part.get_content_type()};base64,{encoded}"

    def replace(found: re.Match[str]) -> str:
        return images.get(urllib.parse.unquote(found.group(1)), found.group(0))

    return _CID.sub(replace, html)


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


# Files no row names any more (their server was deleted, or a fetch was killed between writing a
# pack and committing its rows) are deleted once older than this, so that a fetch in progress,
# whose pack is written before its rows are committed, is never touched.
SWEEP_GRACE_SECONDS = 24 * 3600.0
SWEEP_EVERY = 3600.0  # seconds between two sweeps of one worker process
_last_sweep = 0.0


def sweep_files(*, grace_seconds: float = SWEEP_GRACE_SECONDS) -> int:
    """Delete message files under MAILGATE_HOME/inbox (.eml, .pack, spool leftovers) that no
    incoming message names and that were last written over `grace_seconds` ago; how many."""
    root = home() / STORE_DIR
    if not root.is_dir():
        return 0
    cutoff = time.time() - grace_seconds
    named = set(
        IncomingMessage.objects.exclude(raw_file="").values_list("raw_file", flat=True).distinct()
    )
    removed = 0
    for path in root.rglob("*"):
        if path.suffix not in (".eml", ".pack") and path.parent.name != "tmp":
            continue
        try:
            if not path.is_file() or path.stat().st_mtime > cutoff:
                continue
            if str(path.relative_to(home())) in named:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
    if removed:
        log.info("deleted %d incoming message files that no message names any more", removed)
    return removed


def sweep_step() -> bool:
    """Worker step: sweep the inbox's files now and then (never reports work done)."""
    global _last_sweep
    if _last_sweep and time.monotonic() - _last_sweep < SWEEP_EVERY:
        return False
    _last_sweep = time.monotonic()
    sweep_files()
    return False
