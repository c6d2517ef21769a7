"""Test Connection from the console: it serves every kind of server, OAuth or not."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from mailgate.accounts.roles import admin_required
from mailgate.diagnostics.connection import run_connection_test
from mailgate.diagnostics.send_test import send_test_message
from mailgate.servers.models import MailServer


@require_POST
@admin_required
def test_connection(request: HttpRequest, pk: int) -> HttpResponse:
    """Run the connection test; the server page's connection panel shows its result."""
    server = get_object_or_404(MailServer, pk=pk)
    run_connection_test(server)
    return redirect(reverse("servers:edit", args=[server.pk]) + "#connection")


def send_test_key(pk: int) -> str:
    """The session key under which the server page finds the last test message's result."""
    return f"mailgate.send-test.{pk}"


@require_POST
@admin_required
def send_test(request: HttpRequest, pk: int) -> HttpResponse:
    """Send test message: queue one, wait briefly for its outcome, show it on the server's page."""
    server = get_object_or_404(MailServer, pk=pk)
    result = send_test_message(server, request.POST.get("to", ""))
    request.session[send_test_key(server.pk)] = result.as_dict()
    return redirect(reverse("servers:edit", args=[server.pk]) + "#connection")
