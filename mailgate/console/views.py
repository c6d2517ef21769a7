from __future__ import annotations

import mimetypes
from pathlib import Path

from django.contrib.auth.decorators import login_not_required
from django.contrib.staticfiles import finders
from django.db import connection
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET
from django.views.defaults import page_not_found

from mailgate.accounts.roles import admin_required
from mailgate.audit.models import KINDS, AuditEvent
from mailgate.diagnostics.health import server_reports, system_findings
from mailgate.diagnostics.traffic import PERIODS, SERIES, traffic
from mailgate.servers.forms import note_console_origin

# Ok findings the dashboard's columns already show (status badge, last test).
SHOWN_IN_COLUMNS = {"token", "last_test", "server", "inactive"}


def dashboard(request: HttpRequest) -> HttpResponse:
    """Server health at a glance, for administrators and viewers alike (read-only, no secrets)."""
    now = timezone.now()
    note_console_origin(request)  # system_findings() then warns about a wrong address
    system = system_findings(now=now)
    reports = []
    if not any(f.needs_action and f.check in ("database", "migrations") for f in system):
        reports = server_reports(now=now)
    charts = traffic([r.server for r in reports], now=now)
    rows = [
        {
            "report": r,
            "charts": [charts[r.server.pk][p.key] for p in PERIODS],
            "problems": r.problems,
            "notes": [
                f for f in r.findings if not f.needs_action and f.check not in SHOWN_IN_COLUMNS
            ],
        }
        for r in reports
    ]
    problems = sum(len(r.problems) for r in reports) + sum(f.needs_action for f in system)
    return render(
        request,
        "mailgate/dashboard.html",
        {
            "system_problems": [f for f in system if f.needs_action],
            "system_ok": [f for f in system if not f.needs_action],
            "rows": rows,
            "problem_count": problems,
            "checked_at": now,
            "periods": PERIODS,
            "series": [(label, colour) for _, label, colour, _ in SERIES],
        },
    )


def settings_menu(request: HttpRequest) -> HttpResponse:
    return render(request, "mailgate/settings.html")


def technical_menu(request: HttpRequest) -> HttpResponse:
    return render(request, "mailgate/technical.html")


@login_not_required
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness and database reachability, for load balancers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return JsonResponse({"status": "error", "database": "unreachable"}, status=503)
    return JsonResponse({"status": "ok"})


@admin_required
def audit_log(request: HttpRequest) -> HttpResponse:
    """Settings > Audit Log: the newest security events, for administrators."""
    kind = request.GET.get("kind", "")
    events = AuditEvent.objects.all()
    if kind in KINDS:
        events = events.filter(kind=kind)
    context = {"events": events[:500], "kinds": KINDS, "kind": kind}
    return render(request, "mailgate/audit.html", context)


@login_not_required
@require_GET
def static_file(request: HttpRequest, path: str) -> FileResponse:
    """The installed apps' static files (the console's scripts, the API docs' Swagger UI), served
    by mailgate itself so that nothing is fetched from a CDN and no separate web server is needed.
    Only files the static finders know are served."""
    if ".." in Path(path).parts:
        raise Http404("no such file")
    found = finders.find(path)
    if not found or not isinstance(found, str):
        raise Http404("no such file")
    content_type = mimetypes.guess_type(found)[0] or "application/octet-stream"
    response = FileResponse(open(found, "rb"), content_type=content_type)  # noqa: SIM115
    response["Cache-Control"] = "public, max-age=3600"
    return response


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404: JSON naming the path under /api/ (a client reads it), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        problem = "no API operation at this path: see /api/v1/openapi.json"
        return JsonResponse({"detail": f"path: {problem}", "errors": {"path": problem}}, status=404)
    return page_not_found(request, exception or Exception("not found"))
