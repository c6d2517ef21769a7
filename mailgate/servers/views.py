"""Settings > Technical > Mail Server > Mail Servers: list, add, edit, delete."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import ProtectedError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_http_methods

from mailgate.accounts.roles import admin_required, is_administrator
from mailgate.servers.forms import (
    MailServerForm,
    form_defaults,
    note_console_origin,
    public_url_warning,
)
from mailgate.servers.models import AUTH_METHODS, MailServer


@require_http_methods(["GET"])
def form_script(request: HttpRequest) -> HttpResponse:
    """The server form's script, as a file: the Content-Security-Policy allows no inline script."""
    response = HttpResponse(
        render_to_string("servers/form.js"), content_type="text/javascript; charset=utf-8"
    )
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_http_methods(["GET"])
def server_list(request: HttpRequest) -> HttpResponse:
    return render(request, "servers/list.html", {"servers": MailServer.objects.all()})


def _form_page(
    request: HttpRequest, form: MailServerForm, server: MailServer | None
) -> HttpResponse:
    method = form["auth_method"].value() or "password"
    defaults = form_defaults()
    context: dict[str, Any] = {
        "form": form,
        "server": server,
        "defaults": defaults,
        "redirect_url": defaults["methods"].get(method, {}).get("redirect_url", ""),
        "public_url_warning": public_url_warning(),
        "origin_warning": note_console_origin(request),
        "stored_notes": form.stored_notes(),
        "retyped_secrets": form.retyped_secrets(),
        "read_only": not is_administrator(request.user),
        # Set by Send test message (mailgate.diagnostics.views.send_test_key), shown once.
        "send_test": request.session.pop(f"mailgate.send-test.{server.pk}", None)
        if server
        else None,
    }
    return render(request, "servers/form.html", context)


def _report_warnings(request: HttpRequest, form: MailServerForm) -> None:
    for warning in form.warnings:
        messages.warning(request, warning)


# Error reports (and Django's debug page) show these posted values as stars.
SECRET_POST_FIELDS = ("password", "client_secret", "private_key")


@admin_required
@sensitive_post_parameters(*SECRET_POST_FIELDS)
@sensitive_variables("form")
@require_http_methods(["GET", "POST"])
def server_add(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = MailServerForm(request.POST)
        if form.is_valid():
            server = form.save()
            messages.success(request, f"Mail server “{server.name}” created.")
            _report_warnings(request, form)
            return redirect("servers:edit", pk=server.pk)
        return _form_page(request, form, None)
    method = request.GET.get("auth", "password")
    initial = {"auth_method": method if method in AUTH_METHODS else "password"}
    return _form_page(request, MailServerForm(initial=initial), None)


@sensitive_post_parameters(*SECRET_POST_FIELDS)
@sensitive_variables("form")
@require_http_methods(["GET", "POST"])
def server_edit(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(MailServer, pk=pk)
    if request.method == "POST":
        if not is_administrator(request.user):
            raise PermissionDenied("Only administrators can change mail servers.")
        form = MailServerForm(request.POST, instance=server)
        if form.is_valid():
            form.save()
            messages.success(request, f"Mail server “{server.name}” saved.")
            _report_warnings(request, form)
            return redirect("servers:edit", pk=server.pk)
        # The failed form must not leak into the saved instance shown by the connection panel.
        server.refresh_from_db()
        return _form_page(request, form, server)
    read_only = not is_administrator(request.user)
    return _form_page(request, MailServerForm(instance=server, read_only=read_only), server)


@admin_required
@require_http_methods(["GET", "POST"])
def server_delete(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(MailServer, pk=pk)
    if request.method == "POST":
        name = server.name
        try:
            server.delete()
        except ProtectedError:
            messages.error(
                request,
                f"Mail server “{name}” still has messages that refer to it: clear Active to stop "
                "using it instead.",
            )
            return redirect("servers:edit", pk=pk)
        messages.success(request, f"Mail server “{name}” deleted.")
        return redirect("servers:list")
    return render(request, "servers/confirm_delete.html", {"server": server})
