from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseNotFound
from django.shortcuts import render

from mailgate.servers.models import MailServer


def server_list(request: HttpRequest) -> HttpResponse:
    return render(request, "mailgate/dashboard.html", {"servers": MailServer.objects.all()})


def server_add(request: HttpRequest) -> HttpResponse:
    return HttpResponseNotFound("not yet")


def server_edit(request: HttpRequest, pk: int) -> HttpResponse:
    return HttpResponseNotFound("not yet")
