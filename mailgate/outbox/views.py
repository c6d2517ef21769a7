"""The Outbox console page: list with filters, one message with its attempts, Retry and Cancel."""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from mailgate.accounts.roles import admin_required
from mailgate.outbox.actions import ActionRefused, cancel_message, retry_message
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.servers.listing import filter_by_status_and_server, status_counts
from mailgate.servers.models import MailServer


def _date(value: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        return None


def message_list(request: HttpRequest) -> HttpResponse:
    rows = (
        OutgoingMessage.objects.select_related("server").defer("raw").order_by("-created_at", "-id")
    )
    rows, filters, problems = filter_by_status_and_server(rows, request, Status)
    since = request.GET.get("since", "")
    until = request.GET.get("until", "")
    query = request.GET.get("q", "").strip()
    if query:
        # Recipient, subject or Message-ID (and sender): what someone asking "where is my mail?"
        # has at hand.
        rows = rows.filter(
            Q(to__icontains=query)
            | Q(cc__icontains=query)
            | Q(bcc__icontains=query)
            | Q(subject__icontains=query)
            | Q(message_id__icontains=query.strip("<>"))
            | Q(from_address__icontains=query)
        )
    since_date, until_date = _date(since), _date(until)
    if since and since_date is None:
        problems.append("From date: use the form YYYY-MM-DD.")
    if until and until_date is None:
        problems.append("To date: use the form YYYY-MM-DD.")
    if since_date:
        rows = rows.filter(created_at__date__gte=since_date)
    if until_date:
        rows = rows.filter(created_at__date__lte=until_date)
    page = Paginator(rows, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "outbox/list.html",
        {
            "page": page,
            "statuses": Status.choices,
            "servers": MailServer.objects.all(),
            "counts": status_counts(OutgoingMessage, Status),
            "filters": {**filters, "since": since, "until": until, "q": query},
            "problems": problems,
        },
    )


def message_detail(request: HttpRequest, pk: int) -> HttpResponse:
    message = get_object_or_404(OutgoingMessage.objects.select_related("server"), pk=pk)
    return render(
        request,
        "outbox/detail.html",
        {"message": message, "attempts": message.attempt_log.all()},
    )


@require_POST
@admin_required
def message_retry(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        retry_message(pk)
    except ActionRefused as exc:
        messages.error(request, f"Not retried: {exc}.")
    else:
        messages.success(request, f"Message {pk} is queued again.")
    return redirect("outbox:detail", pk=pk)


@require_POST
@admin_required
def message_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        cancel_message(pk)
    except ActionRefused as exc:
        messages.error(request, f"Not cancelled: {exc}.")
    else:
        messages.success(request, f"Message {pk} is cancelled.")
    return redirect("outbox:detail", pk=pk)
