from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from mailgate.servers.models import MailServer


def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "mailgate/dashboard.html", {"servers": MailServer.objects.all()})


def settings_menu(request: HttpRequest) -> HttpResponse:
    return render(request, "mailgate/settings.html")


def technical_menu(request: HttpRequest) -> HttpResponse:
    return render(request, "mailgate/technical.html")


def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness and database reachability, for load balancers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return JsonResponse({"status": "error", "database": "unreachable"}, status=503)
    return JsonResponse({"status": "ok"})
