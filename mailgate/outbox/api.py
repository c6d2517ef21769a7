"""REST API: /api/v1/messages."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema
from ninja import Status as WithStatus
from ninja.responses import NinjaJSONEncoder

from mailgate.outbox.compose import Attachment, InvalidMessage, MessageSpec
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.outbox.submit import IdempotencyKeyReused, enqueue, insert, prepare

router = Router(tags=["messages"])


class AttachmentIn(Schema):
    filename: str = Field(description="The file name the recipient sees.", examples=["invoice.pdf"])
    content_type: str = Field(
        "application/octet-stream",
        description="The MIME type of the file.",
        examples=["application/pdf"],
    )
    content_base64: str = Field(
        description="The file's bytes, base64-encoded (RFC 4648, with padding).",
        examples=["JVBERi0xLjQK"],
    )

    model_config = {"extra": "forbid"}


class MessageIn(Schema):
    """Either the fields of a message or a complete RFC 5322 message in `raw`."""

    sender: str | None = Field(
        None,
        alias="from",
        description="The From address, with an optional display name. It also picks the mail "
        "server (From Filter, then the server whose mailbox it is) unless `server` is given.",
        examples=["Billing <billing@contoso.example>"],
    )
    to: list[str] | str = Field(
        default_factory=list,
        description="Recipients: a list, or one string of comma-separated addresses.",
        examples=[["alex@example.org", "Sam <sam@example.org>"]],
    )
    cc: list[str] | str = Field(
        default_factory=list, description="Copy recipients.", examples=[["team@example.org"]]
    )
    bcc: list[str] | str = Field(
        default_factory=list,
        description="Blind copy recipients (not written into the message).",
        examples=[["archive@contoso.example"]],
    )
    reply_to: str | None = Field(
        None, description="Where replies go.", examples=["support@contoso.example"]
    )
    subject: str = Field("", description="The subject line.", examples=["Your invoice 2024-117"])
    text: str | None = Field(
        None,
        description="The plain-text body.",
        examples=["Hello Alex,\n\nyour invoice is attached."],
    )
    html: str | None = Field(
        None,
        description="An HTML body (sent as an alternative to `text`).",
        examples=["<p>Hello Alex,</p><p>your invoice is attached.</p>"],
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra headers (no line breaks; From, To and the like come from their fields).",
        examples=[{"X-Order": "2024-117"}],
    )
    attachments: list[AttachmentIn] = Field(
        default_factory=list, description="Files to attach, each base64-encoded."
    )
    raw: str | None = Field(
        None,
        description="A complete RFC 5322 message instead of the fields above (its Bcc header "
        "is removed before sending).",
        examples=[
            "From: billing@contoso.example\r\nTo: alex@example.org\r\nSubject: Hi\r\n\r\nHello\r\n"
        ],
    )
    server: str | None = Field(
        None,
        description="The name of the mail server to send through; default: chosen by the From "
        "address (the reason is in the answer's `route_reason`).",
        examples=["Contoso Outlook"],
    )

    model_config = {"populate_by_name": True, "extra": "forbid"}

    def spec(self) -> MessageSpec:
        """The message this body asks for (the fields share MessageSpec's names); an empty
        recipient list counts as not given."""
        given = self.model_dump(include=set(MessageIn.model_fields) - NOT_MESSAGE_FIELDS)
        for name in ("to", "cc", "bcc"):
            given[name] = given[name] or None
        return MessageSpec(
            **given, from_address=self.sender, attachments=_attachments(self.attachments)
        )


# Request fields that say how to queue the message rather than what it is.
NOT_MESSAGE_FIELDS = {"sender", "attachments", "server"}


class AttemptOut(Schema):
    started_at: datetime = Field(description="When the attempt began (UTC).")
    duration_ms: int = Field(description="How long it took.", examples=[412])
    outcome: str = Field(
        description="sent, deferred, throttled, held or failed.", examples=["deferred"]
    )
    step: str = Field(
        description="The SMTP step that answered (connect, auth, mail, rcpt, data).",
        examples=["rcpt"],
    )
    reply: str = Field(
        description="The server's reply.", examples=["451 4.7.500 Server busy, try again later"]
    )
    error: str = Field(description="What went wrong, in mailgate's words.", examples=[""])


class MessageOut(Schema):
    id: int = Field(description="mailgate's id of the message.", examples=[117])
    status: str = Field(
        description="queued, sending, sent, deferred (retried later), held (waits for its "
        "server to be fixed), failed or cancelled.",
        examples=["queued"],
    )
    message_id: str = Field(
        description="The Message-ID header, fixed when queued.",
        examples=["<171234.117@contoso.example>"],
    )
    server: str = Field(
        description="The mail server it goes through.", examples=["Contoso Outlook"]
    )
    sender: str = Field(
        alias="from", description="The From address.", examples=["billing@contoso.example"]
    )
    to: list[str] = Field(description="Recipients.", examples=[["alex@example.org"]])
    cc: list[str] = Field(description="Copy recipients.", examples=[[]])
    subject: str = Field(description="The subject line.", examples=["Your invoice 2024-117"])
    size: int = Field(description="Size of the message in bytes.", examples=[2048])
    attempts: int = Field(description="Delivery attempts so far.", examples=[0])
    last_error: str = Field(description="The last attempt's error.", examples=[""])
    last_reply: str = Field(description="The server's last reply.", examples=["250 2.0.0 OK"])
    diagnosis: str = Field(
        description="Why it waits or failed, and the fix.",
        examples=["connect your account: ... Fix: press Connect your Outlook account"],
    )
    route_reason: str = Field(
        description="Why this server was chosen (From Filter, mailbox, connected, Priority).",
        examples=["routed by From: From Filter names the address, status Token Valid, Priority 10"],
    )
    queue_id: str = Field(description="The receiving server's queue id, once sent.", examples=[""])
    created_at: datetime = Field(description="When it was queued (UTC).")
    next_attempt_at: datetime | None = Field(description="The next try, while it waits.")
    sent_at: datetime | None = Field(description="When the server accepted it.")

    model_config = {"populate_by_name": True}


class MessageDetailOut(MessageOut):
    attempt_log: list[AttemptOut]


class ErrorOut(Schema):
    """RFC 9457 problem details, served as application/problem+json: every error of the API."""

    type: str = Field(
        "about:blank", description="A URI naming the kind of problem.", examples=["about:blank"]
    )
    title: str = Field("", description="A short summary of it.", examples=["Bad Request"])
    status: int = Field(0, description="The HTTP status code.", examples=[400])
    detail: str = Field(
        description="What is wrong and how to fix it.",
        examples=["to: 'alex@' is not a valid address"],
    )
    errors: dict[str, str] = Field(
        default_factory=dict,
        description="Each failing field's path and what is wrong with it.",
        examples=[{"to[0]": "'alex@' is not a valid address"}],
    )


ProblemOut = ErrorOut

IDEMPOTENCY_HEADER = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": False,
    "description": "A unique value per message (1 to 255 printable characters): a retry with "
    "the same key and body answers 200 with the first message instead of queueing another; "
    "the same key with another body is refused (422).",
    "schema": {"type": "string", "maxLength": 255},
    "example": "order-2024-117",
}


# draft-ietf-httpapi-idempotency-key-header, "Error Scenarios": a key reused with another payload
# is refused with 422 and a problem-details body (Stripe refuses such a reuse too).
IDEMPOTENCY_PROBLEM = "https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/"


def _out(message: OutgoingMessage) -> dict[str, Any]:
    waiting = message.status in (Status.QUEUED, Status.DEFERRED)
    return {
        "id": message.pk,
        "status": message.status,
        "message_id": message.message_id,
        "server": message.server.name,
        "from": message.from_address,
        "to": message.to,
        "cc": message.cc,
        "subject": message.subject,
        "size": message.size,
        "attempts": message.attempts,
        "last_error": message.last_error,
        "last_reply": message.last_reply,
        "diagnosis": message.diagnosis,
        "route_reason": message.route_reason,
        "queue_id": message.queue_id,
        "created_at": message.created_at,
        "next_attempt_at": message.next_attempt_at if waiting else None,
        "sent_at": message.sent_at,
    }


def _attachments(items: list[AttachmentIn]) -> list[Attachment]:
    result = []
    for i, item in enumerate(items):
        try:
            content = base64.b64decode(item.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidMessage.one(
                f"attachments[{i}].content_base64", "is not valid base64"
            ) from None
        result.append(Attachment(item.filename, content, item.content_type))
    return result


def _caller_may(request: HttpRequest, action: str) -> bool:
    """Whether the request's API key allows the action (`send`, `read_all`); no key: nothing."""
    allows = getattr(getattr(request, "auth", None), "allows", None)
    return bool(allows is not None and allows(action))


def _owner_tag(request: HttpRequest) -> str:
    return str(getattr(getattr(request, "auth", None), "owner_tag", ""))


def _scope_refused(request: HttpRequest, needed: str) -> WithStatus[dict[str, Any]]:
    scope = getattr(getattr(request, "auth", None), "scope", "?")
    problem = (
        f"the key's scope {scope!r} does not allow this: it needs a key with scope {needed} "
        f"(`mailgate api-keys create --name N --scope {needed}`)"
    )
    return WithStatus(
        403, {"detail": f"Authorization: {problem}", "errors": {"Authorization": problem}}
    )


def _readable(request: HttpRequest) -> QuerySet[OutgoingMessage]:
    """The messages the caller may read: all with `read_all`, else only those it queued."""
    messages: QuerySet[OutgoingMessage] = OutgoingMessage.objects.select_related("server")
    if _caller_may(request, "read_all"):
        return messages
    return messages.filter(submitted_by=_owner_tag(request) or "-")


def _idempotency_scope(request: HttpRequest) -> str:
    key = getattr(request, "auth", None)
    return f"apikey:{getattr(key, 'pk', '-')}:"


KEY_RULE = "must be 1 to 255 printable characters"


def _scoped_key(request: HttpRequest, value: str | None) -> str | None:
    """The stored idempotency key for a client's key (None without one); ValueError if malformed."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 255 or not value.isprintable():
        raise ValueError(KEY_RULE)
    return _idempotency_scope(request) + value


def _enqueue(
    request: HttpRequest, payload: MessageIn, idempotency_key: str | None
) -> OutgoingMessage:
    """Queue one message of the API's shape; InvalidMessage (or IdempotencyKeyReused) otherwise."""
    return enqueue(
        payload.spec(),
        server=payload.server,
        idempotency_key=idempotency_key,
        source="api",
        submitted_by=_owner_tag(request),
    )


def _key_reused(header: str, exc: IdempotencyKeyReused) -> HttpResponse:
    problem = (
        f"{header!r} was already used for message {exc.first.pk}, queued from a different "
        "request: use a new key for a different message (a retry must repeat the first "
        "request exactly)"
    )
    body = {
        "type": IDEMPOTENCY_PROBLEM,
        "title": "Idempotency-Key is already used",
        "status": 422,
        "detail": f"Idempotency-Key: {problem}",
        "errors": {"Idempotency-Key": problem},
    }
    return HttpResponse(json.dumps(body), status=422, content_type="application/problem+json")


@router.post(
    "",
    response={
        200: MessageOut,
        201: MessageOut,
        400: ErrorOut,
        403: ErrorOut,
        422: ErrorOut | ProblemOut,
    },
    by_alias=True,
    summary="Queue a message",
    openapi_extra={"parameters": [IDEMPOTENCY_HEADER]},
)
def create_message(
    request: HttpRequest, payload: MessageIn
) -> WithStatus[dict[str, Any]] | HttpResponse:
    """Queue a message; with `Idempotency-Key`, a retried request returns the first message (200).

    The same key with a different request is refused (422) and queues nothing.
    """
    if not _caller_may(request, "send"):
        return _scope_refused(request, "send")
    header = request.headers.get("Idempotency-Key")
    try:
        idempotency_key = _scoped_key(request, header)
    except ValueError as exc:
        return WithStatus(
            400, {"detail": f"Idempotency-Key: {exc}", "errors": {"Idempotency-Key": str(exc)}}
        )
    try:
        message = _enqueue(request, payload, idempotency_key)
    except IdempotencyKeyReused as exc:
        return _key_reused(str(header).strip(), exc)
    except InvalidMessage as exc:
        return WithStatus(422, {"detail": str(exc), "errors": exc.errors})
    return _answer(request, 200 if message.idempotent_replay else 201, _out(message))


def _answer(request: HttpRequest, status: int, data: dict[str, Any]) -> HttpResponse:
    """A success rendered from what was just written: `data` has the response schema's fields
    and types already (the schema still documents it), so it is not validated again; rendered as
    the API's renderer does (ninja's JSON encoder)."""
    return HttpResponse(
        json.dumps(data, cls=NinjaJSONEncoder), status=status, content_type=JSON_CONTENT_TYPE
    )


JSON_CONTENT_TYPE = "application/json; charset=utf-8"


MAX_BATCH = 500


class BatchItemIn(MessageIn):
    idempotency_key: str | None = Field(
        None, description="as the Idempotency-Key header of POST /messages, for this message"
    )


class BatchIn(Schema):
    messages: list[BatchItemIn]


class BatchResultOut(Schema):
    """One message's outcome, with the status POST /messages would have answered: 201 queued, 200
    a retry of an idempotency key, 422 refused (fields at fault in `errors`, or a key already used
    for other content), 400 a malformed idempotency key. `id` and `message_id` only when queued
    (or replayed)."""

    status: int
    id: int | None = None
    message_id: str | None = None
    detail: str = ""
    errors: dict[str, str] = Field(default_factory=dict)


class BatchOut(Schema):
    queued: int
    refused: int
    results: list[BatchResultOut]


def _refused(status: int, errors: dict[str, str]) -> dict[str, Any]:
    detail = "; ".join(f"{name}: {text}" for name, text in errors.items())
    return {"status": status, "id": None, "message_id": None, "detail": detail, "errors": errors}


def _queued(message: OutgoingMessage) -> dict[str, Any]:
    return {
        "status": 200 if message.idempotent_replay else 201,
        "id": message.pk,
        "message_id": message.message_id,
        "detail": "",
        "errors": {},
    }


class _Batch:
    """Queues a batch's messages in order: those without an idempotency key are inserted together
    (one INSERT for all of them up to the next message with a key, whose lookup must see them)."""

    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        self.owner = _owner_tag(request)
        self.results: list[dict[str, Any]] = []
        self.pending: list[tuple[dict[str, Any], OutgoingMessage]] = []

    def add(self, index: int, item: BatchItemIn) -> None:
        field = f"messages[{index}]"
        try:
            idempotency_key = _scoped_key(self.request, item.idempotency_key)
        except ValueError as exc:
            self.results.append(_refused(400, {f"{field}.idempotency_key": str(exc)}))
            return
        try:
            if idempotency_key is None:
                message = prepare(
                    item.spec(), server=item.server, source="api", submitted_by=self.owner
                )
                result: dict[str, Any] = {}
                self.pending.append((result, message))
                self.results.append(result)
                return
            self.flush()
            message = _enqueue(self.request, item, idempotency_key)
        except IdempotencyKeyReused as exc:
            problem = exc.errors["idempotency_key"]
            self.results.append(_refused(422, {f"{field}.idempotency_key": problem}))
            return
        except InvalidMessage as exc:
            errors = {f"{field}.{name}": text for name, text in exc.errors.items()}
            self.results.append(_refused(422, errors))
            return
        self.results.append(_queued(message))

    def flush(self) -> None:
        insert([message for _, message in self.pending])
        for result, message in self.pending:
            result.update(_queued(message))
        self.pending = []


@router.post(
    "/batch",
    response={200: BatchOut, 400: ErrorOut, 403: ErrorOut},
    summary="Queue up to 500 messages",
)
def create_messages(
    request: HttpRequest, payload: BatchIn
) -> WithStatus[dict[str, Any]] | HttpResponse:
    """Queue each message of `messages` (up to 500) as POST /messages would, in one transaction.

    Each message gets its own result, in order, with the status POST /messages would answer: the
    valid ones are queued (committed together), the others (422) name the fields at fault
    (`messages[<index>].<field>`) and queue nothing. Per-message `idempotency_key`s work as the
    Idempotency-Key header does.
    """
    if not _caller_may(request, "send"):
        return _scope_refused(request, "send")
    count = len(payload.messages)
    if not 1 <= count <= MAX_BATCH:
        problem = f"must hold 1 to {MAX_BATCH} messages (it holds {count})"
        return WithStatus(400, {"detail": f"messages: {problem}", "errors": {"messages": problem}})
    batch = _Batch(request)
    with transaction.atomic():
        for index, item in enumerate(payload.messages):
            batch.add(index, item)
        batch.flush()
    results = batch.results
    queued = sum(1 for result in results if result["status"] in (200, 201))
    return _answer(request, 200, {"queued": queued, "refused": count - queued, "results": results})


@router.get("", response=list[MessageOut], by_alias=True, summary="List messages")
def list_messages(
    request: HttpRequest,
    status: Status | None = Query(None),  # noqa: B008 - django-ninja declares parameters this way
    limit: int = Query(100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """The newest messages first, optionally only those with one status (a `send` key: only the
    messages it queued)."""
    messages = _readable(request)
    if status is not None:
        messages = messages.filter(status=status)
    return [_out(m) for m in messages.order_by("-created_at", "-id")[:limit]]


@router.get(
    "/{message_id}",
    response={200: MessageDetailOut, 404: ErrorOut},
    by_alias=True,
    summary="One message with its delivery attempts",
)
def get_message(request: HttpRequest, message_id: int) -> WithStatus[dict[str, Any]]:
    message = _readable(request).filter(pk=message_id).first()
    if message is None:
        problem = f"no message with id {message_id} that this API key may read"
        return WithStatus(404, {"detail": problem, "errors": {"message_id": problem}})
    data = _out(message)
    data["attempt_log"] = [
        {
            "started_at": a.started_at,
            "duration_ms": a.duration_ms,
            "outcome": a.outcome,
            "step": a.step,
            "reply": a.reply,
            "error": a.error,
        }
        for a in message.attempt_log.all()
    ]
    return WithStatus(200, data)
