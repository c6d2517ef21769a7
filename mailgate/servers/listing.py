"""The Status and Server filters and the per-status counts of the console's message lists
(Outbox, Inbox): one implementation for both."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Model, QuerySet, TextChoices
from django.http import HttpRequest


def filter_by_status_and_server(
    rows: QuerySet[Any], request: HttpRequest, statuses: type[TextChoices]
) -> tuple[QuerySet[Any], dict[str, str], list[str]]:
    """Apply `?status=` and `?server=`; the rows, the filters as given, and what was refused."""
    status = request.GET.get("status", "")
    server = request.GET.get("server", "")
    problems = []
    if status:
        if status in statuses.values:
            rows = rows.filter(status=status)
        else:
            problems.append(f"Status: {status!r} is not one of {', '.join(statuses.values)}.")
    if server:
        if server.isdigit():
            rows = rows.filter(server_id=int(server))
        else:
            problems.append("Server: choose a server from the list.")
    return rows, {"status": status, "server": server}, problems


def status_counts(model: type[Model], statuses: type[TextChoices]) -> list[tuple[str, str, int]]:
    """(value, label, number of rows) for every status, zeros included."""
    counts = dict(
        model._default_manager.order_by()
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    return [(value, label, counts.get(value, 0)) for value, label in statuses.choices]
