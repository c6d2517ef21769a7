"""The Inbox console page: fetched messages with filters, one message (headers, bodies,
attachments, webhook deliveries), and Retry for a quarantined message (administrators)."""

from __future__ import annotations

import re

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import content_disposition_header
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_POST

from mailgate.accounts.roles import admin_required
from mailgate.inbox.handoff import retry
from mailgate.inbox.models import FetchState, IncomingMessage, Status
from mailgate.inbox.store import attachment, contents, ensure_parsed, html_with_inline_images
from mailgate.servers.listing import filter_by_status_and_server, status_counts
from mailgate.servers.models import MailServer


def message_list(request: HttpRequest) -> HttpResponse:
    rows = IncomingMessage.objects.select_related("server").defer("raw").order_by("-seq")
    rows, filters, problems = filter_by_status_and_server(rows, request, Status)
    page = Paginator(rows, 50).get_page(request.GET.get("page"))
    for message in page.object_list:
        ensure_parsed(message)
    return render(
        request,
        "inbox/list.html",
        {
            "page": page,
            "statuses": Status.choices,
            "servers": MailServer.objects.exclude(incoming_protocol="none"),
            "fetch_states": FetchState.objects.select_related("server").order_by("server__name"),
            "counts": status_counts(IncomingMessage, Status),
            "filters": filters,
            "problems": problems,
        },
    )


def message_detail(request: HttpRequest, pk: int) -> HttpResponse:
    message = ensure_parsed(
        get_object_or_404(IncomingMessage.objects.select_related("server"), pk=pk)
    )
    found = contents(message)
    return render(
        request,
        "inbox/detail.html",
        {
            "message": message,
            "contents": found,
            "remote": _wants_remote(request),
            "has_remote": found.html is not None and bool(_REMOTE.search(found.html)),
            "deliveries": message.webhook_deliveries.all(),
        },
    )


# An address that a browser would fetch from elsewhere: src/href/background/url(...) to http(s)
# or a protocol-relative //host (what "Show remote content" would let load).
_REMOTE = re.compile(r"""(?:=|url\()\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)

# The HTML body of a received message comes from strangers: it is shown in a sandboxed frame
# (no script, no form, no plugin, an origin of its own) under a policy that loads nothing from
# anywhere, so a tracking pixel or a remote style never tells the sender the message was opened.
HTML_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'self'; sandbox"
)
# "Show remote content": images, styles and fonts from elsewhere; still no script.
HTML_POLICY_REMOTE = (
    "default-src 'none'; img-src data: https: http:; style-src 'unsafe-inline' https: http:; "
    "font-src data: https: http:; form-action 'none'; base-uri 'none'; frame-ancestors 'self'; "
    "sandbox"
)


def _wants_remote(request: HttpRequest) -> bool:
    return request.GET.get("remote") == "1"


@xframe_options_sameorigin
def message_html(request: HttpRequest, pk: int) -> HttpResponse:
    """The HTML body alone, for the message page's sandboxed frame: remote content blocked
    unless `?remote=1`, scripts never run; the message's own inline images shown (data: URLs)."""
    html = html_with_inline_images(get_object_or_404(IncomingMessage, pk=pk))
    if html is None:
        raise Http404(f"message {pk} has no HTML body")
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = (
        HTML_POLICY_REMOTE if _wants_remote(request) else HTML_POLICY
    )
    response["Referrer-Policy"] = "no-referrer"
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response


def message_raw(request: HttpRequest, pk: int) -> HttpResponse:
    message = get_object_or_404(IncomingMessage, pk=pk)
    response = HttpResponse(message.raw_bytes(), content_type="message/rfc822")
    response["Content-Disposition"] = content_disposition_header(True, f"message-{pk}.eml")
    return response


def message_attachment(request: HttpRequest, pk: int, n: int) -> HttpResponse:
    found = attachment(get_object_or_404(IncomingMessage, pk=pk), n)
    if found is None:
        raise Http404(f"message {pk} has no attachment {n}")
    return download(*found)


def download(filename: str, content_type: str, data: bytes) -> HttpResponse:
    """An attachment that a browser saves, never renders in mailgate's origin (its content comes
    from strangers)."""
    response = HttpResponse(data, content_type=content_type)
    response["Content-Disposition"] = content_disposition_header(True, filename)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "sandbox"
    return response


@require_POST
@admin_required
def message_retry(request: HttpRequest, pk: int) -> HttpResponse:
    message = get_object_or_404(IncomingMessage, pk=pk)
    if message.status != Status.QUARANTINED:
        messages.error(request, f"Not retried: message {pk} is not in Quarantine.")
    else:
        retry(message)
        messages.success(request, f"Message {pk} is handed to the application again.")
    return redirect("inbox:detail", pk=pk)
