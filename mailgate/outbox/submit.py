"""`enqueue()`: the one way into the outbox; a row insert inside the caller's transaction."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.signals import post_save, pre_save
from django.utils import timezone

from mailgate.outbox.compose import Attachment, InvalidMessage, MessageSpec
from mailgate.outbox.hold import connect_first, hold_server, is_held
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.outbox.routing import resolve_route
from mailgate.outbox.wakeup import announce
from mailgate.servers.models import MailServer


def _human(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size = size / 1024  # type: ignore[assignment]
    return str(size)


class IdempotencyKeyReused(InvalidMessage):
    """The idempotency key already queued a message, from a request with different content."""

    def __init__(self, first: OutgoingMessage) -> None:
        self.first = first
        super().__init__(
            {
                "idempotency_key": f"is already used by message {first.pk}, which was queued "
                "from different content: use a new key for a different message (a retry "
                "must repeat the first request exactly)"
            }
        )


class MessageTooLarge(InvalidMessage):
    """The message is larger than its server takes (SMTP's 552 5.3.4)."""


def _canonical(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Attachment):
        return [value.filename, value.content_type, _canonical(value.content)]
    if isinstance(value, MailServer):
        return value.pk
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def request_fingerprint(spec: MessageSpec, server: MailServer | str | int | None = None) -> str:
    """SHA-256 (hex) of a request (the message's fields and the server asked for) as canonical JSON.

    Keys sorted, empty fields (None, "", [], {}) left out, a raw message by its bytes and
    attachments by their name, type and bytes; a server by its id, or as the name given.
    """
    fields: dict[str, object] = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    fields["server"] = server
    raw = fields.get("raw")
    if isinstance(raw, str):
        fields["raw"] = raw.encode("utf-8", "surrogatepass")
    present = {k: _canonical(v) for k, v in fields.items() if v not in (None, "", [], (), {})}
    text = json.dumps(present, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _same_request(first: OutgoingMessage, fingerprint: str | None) -> OutgoingMessage:
    """The first message of a key, for a retry of its request; IdempotencyKeyReused otherwise."""
    if first.idempotency_fingerprint is not None and first.idempotency_fingerprint != fingerprint:
        raise IdempotencyKeyReused(first)
    first.idempotent_replay = True
    return first


def enqueue(
    spec: MessageSpec | None = None,
    /,
    *,
    server: MailServer | str | int | None = None,
    idempotency_key: str | None = None,
    source: str = "python",
    submitted_by: str = "",
    **fields: Any,
) -> OutgoingMessage:
    """Validate, route and queue one message; raise InvalidMessage naming the field on bad input.

    The message is a MessageSpec, or its fields as keywords (from_address=, to=, subject=, text=,
    attachments=, raw=, ...). With an idempotency key already used, nothing is queued: a retry of
    the same request gets the first message (with `idempotent_replay` set), different content
    raises IdempotencyKeyReused.
    """
    if spec is None:
        spec = MessageSpec(**fields)
    elif fields:
        raise TypeError("enqueue() takes a MessageSpec or its fields as keywords, not both")
    fingerprint = None
    if idempotency_key is not None:
        if not idempotency_key or len(idempotency_key) > 400:
            raise InvalidMessage.one("idempotency_key", "must be 1 to 400 characters")
        fingerprint = request_fingerprint(spec, server)
        existing = OutgoingMessage.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return _same_request(existing, fingerprint)
    message = prepare(spec, server=server, source=source, submitted_by=submitted_by)
    message.idempotency_key, message.idempotency_fingerprint = idempotency_key, fingerprint
    if idempotency_key is None:
        store(message)
    else:
        try:
            with transaction.atomic():
                store(message)
        except IntegrityError:
            # A concurrent request with the same key won the race: answer with its message.
            first = OutgoingMessage.objects.get(idempotency_key=idempotency_key)
            return _same_request(first, fingerprint)
    if message.status != Status.HELD:
        announce()
    return message


def prepare(
    spec: MessageSpec,
    /,
    *,
    server: MailServer | str | int | None = None,
    source: str = "python",
    submitted_by: str = "",
) -> OutgoingMessage:
    """The checked, routed and built message row, not yet saved (enqueue() without the insert;
    insert() stores many in one statement). InvalidMessage names the field on bad input."""
    if len(spec.attachments) > settings.MAILGATE_MAX_ATTACHMENTS:
        raise InvalidMessage.one(
            "attachments",
            f"{len(spec.attachments)} attachments are more than the "
            f"{settings.MAILGATE_MAX_ATTACHMENTS} one message may carry: send fewer, or a link",
        )
    composed = spec.compose()
    if len(composed.recipients) > settings.MAILGATE_MAX_RECIPIENTS:
        raise InvalidMessage.one(
            "to",
            f"{len(composed.recipients)} recipients (to, cc and bcc together) are more than the "
            f"{settings.MAILGATE_MAX_RECIPIENTS} one message may have (MAILGATE_MAX_RECIPIENTS): "
            "split the message",
        )
    authors = [composed.author.address] if composed.author else []
    route = resolve_route(server, composed.sender.address, *authors)
    chosen = route.server
    size = len(composed.raw)
    if size > chosen.max_message_bytes:
        raise MessageTooLarge.one(
            spec.body_field,
            f"the message is {_human(size)}, over the {_human(chosen.max_message_bytes)} limit of "
            f"server {chosen.name!r}: make it smaller or send large files as links",
        )
    recipients = composed.recipients
    if chosen.limit_recipients_per_day and len(recipients) > chosen.limit_recipients_per_day:
        raise InvalidMessage.one(
            "to",
            f"{len(recipients)} recipients exceed server {chosen.name!r}'s limit of "
            f"{chosen.limit_recipients_per_day} recipients per day: split the message",
        )
    held = is_held(chosen)
    if not held and (reason := connect_first(chosen)):
        hold_server(chosen, reason)
        held = True
    return OutgoingMessage(
        server=chosen,
        status=Status.HELD if held else Status.QUEUED,
        source=source,
        submitted_by=submitted_by,
        from_address=composed.sender.address,
        to=[m.address for m in composed.to],
        cc=[m.address for m in composed.cc],
        bcc=[m.address for m in composed.bcc],
        reply_to=", ".join(m.address for m in composed.reply_to),
        subject=composed.subject[:998],
        message_id=composed.message_id,
        raw=composed.raw,
        size=size,
        recipients_count=len(recipients),
        next_attempt_at=timezone.now(),
        diagnosis=chosen.hold_reason if held else "",
        route_reason=route.reason[:300],
    )


def store(message: OutgoingMessage) -> None:
    """Insert a new message row, as message.save() would, for a fifth of its CPU.

    Model.save() builds the INSERT for the row's 30 columns anew each time (more than a million
    instructions, a fifth of a whole API request); here the SQL is written once per connection and
    each value is prepared by its field, as the ORM does (pre_save: defaults and auto_now; then
    get_db_prep_save). Where the database cannot return the id, or a receiver listens for the
    model's save signals, it is message.save() itself.
    """
    db = connections[DEFAULT_DB_ALIAS]  # the thread's wrapper: not looked up again per field
    if (
        not db.features.can_return_columns_from_insert
        or pre_save.has_listeners(OutgoingMessage)
        or post_save.has_listeners(OutgoingMessage)
    ):
        message.save()
        return
    plan = getattr(db, "_mailgate_outbox_insert", None)
    if plan is None:
        plan = _insert_plan(db)
        setattr(db, "_mailgate_outbox_insert", plan)  # noqa: B010 (kept with the connection)
    sql, fields = plan
    params = [field.get_db_prep_save(field.pre_save(message, True), db) for field in fields]
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        (message.pk,) = cursor.fetchone()
    message._state.adding = False
    message._state.db = db.alias


def _insert_plan(db: BaseDatabaseWrapper) -> tuple[str, list[Any]]:
    """The INSERT ... RETURNING id of one OutgoingMessage and its fields in column order."""
    meta = OutgoingMessage._meta
    fields = [field for field in meta.concrete_fields if not field.primary_key]
    quote = db.ops.quote_name
    columns = ", ".join(quote(str(field.column)) for field in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({placeholders}) "  # noqa: S608
        f"RETURNING {quote(str(meta.pk.column))}"
    )
    return sql, fields


def insert(messages: list[OutgoingMessage]) -> None:
    """Store prepared messages (without idempotency keys) with one INSERT per statement batch
    (their ids are set: PostgreSQL and SQLite return them) and wake the worker once."""
    if not messages:
        return
    OutgoingMessage.objects.bulk_create(messages)
    if any(message.status != Status.HELD for message in messages):
        announce()
