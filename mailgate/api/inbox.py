"""REST API: /api/v1/inbox, the fetched messages in arrival order, for applications that poll."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.http import FileResponse, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema, Status

from mailgate.inbox.handoff import message_json
from mailgate.inbox.models import IncomingMessage
from mailgate.inbox.store import attachment, contents
from mailgate.inbox.views import download
from mailgate.outbox.api import ErrorOut  # the one problem-details schema of the API
from mailgate.servers.models import MailServer

router = Router(tags=["inbox"])


class AttachmentOut(Schema):
    filename: str
    content_type: str
    size: int


class InboxItemOut(Schema):
    id: int
    server: str
    folder: str
    message_id: str
    sender: str = Field(alias="from")
    to: list[str]
    cc: list[str]
    subject: str
    date: dt.datetime | None
    received_at: dt.datetime
    size: int
    attachments: list[AttachmentOut]
    status: str

    model_config = {"populate_by_name": True}


class InboxPageOut(Schema):
    items: list[InboxItemOut]
    next: str | None = Field(
        description="pass as `after` for the following page; null when nothing newer exists yet "
        "(ask again later with the same `after`)"
    )


class HeaderOut(Schema):
    name: str
    value: str


class InboxMessageOut(InboxItemOut):
    headers: list[HeaderOut]
    text: str | None
    html: str | None
    last_error: str


def _bad(field: str, problem: str) -> Status[dict[str, Any]]:
    return Status(400, {"detail": f"{field}: {problem}", "errors": {field: problem}})


@router.get(
    "",
    response={200: InboxPageOut, 400: ErrorOut},
    by_alias=True,
    summary="List fetched messages in arrival order",
)
def list_inbox(
    request: HttpRequest,
    server: str | None = Query(None, description="a server's name"),
    after: str | None = Query(None, description="the `next` of the previous page"),
    limit: int = Query(100, ge=1, le=1000),
) -> Status[dict[str, Any]]:
    """Messages after the cursor, oldest first. Arrival numbers are committed in order, so a
    poller that always passes the last `next` never misses a message."""
    rows = IncomingMessage.objects.select_related("server").defer("raw").order_by("seq")
    if server is not None:
        found = MailServer.objects.filter(name=server).first()
        if found is None:
            return _bad("server", f"no mail server named {server!r}")
        rows = rows.filter(server=found)
    if after:
        if not after.isdigit() or len(after) > 18:
            return _bad("after", "is not a cursor returned by this API (use the last `next`)")
        rows = rows.filter(seq__gt=int(after))
    items = list(rows[:limit])
    return Status(
        200,
        {
            "items": [message_json(m) for m in items],
            "next": str(items[-1].seq) if items else None,
        },
    )


def _message(pk: int) -> IncomingMessage:
    return get_object_or_404(IncomingMessage.objects.select_related("server"), pk=pk)


@router.get(
    "/{int:message_id}",
    response={200: InboxMessageOut},
    by_alias=True,
    summary="One message with its headers and bodies",
)
def get_message(request: HttpRequest, message_id: int) -> dict[str, Any]:
    message = _message(message_id)
    parsed = contents(message)
    return {
        **message_json(message),
        "headers": [{"name": n, "value": v} for n, v in parsed.headers],
        "text": parsed.text,
        "html": parsed.html,
        "last_error": message.last_error,
    }


@router.get("/{int:message_id}/raw", summary="The exact bytes as fetched (message/rfc822)")
def get_raw(request: HttpRequest, message_id: int) -> HttpResponseBase:
    message = _message(message_id)
    path = message.raw_path()
    name = f"message-{message.pk}.eml"
    if path is not None:
        response: HttpResponseBase = FileResponse(path.open("rb"), content_type="message/rfc822")
    else:
        response = HttpResponse(message.raw_bytes(), content_type="message/rfc822")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@router.get(
    "/{int:message_id}/attachments/{int:n}",
    response={404: ErrorOut},
    summary="The n-th attachment (0-based, as listed in `attachments`)",
)
def get_attachment(request: HttpRequest, message_id: int, n: int) -> Any:
    found = attachment(_message(message_id), n)
    if found is None:
        return Status(404, {"detail": f"n: message {message_id} has no attachment {n}"})
    return download(*found)
