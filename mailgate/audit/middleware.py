"""Names the signed-in account (and client address) as the actor of events a request records."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from mailgate.audit.log import actor_scope


class AuditActor:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        name = str(getattr(user, "username", "")) if user and user.is_authenticated else ""
        with actor_scope(name, request.META.get("REMOTE_ADDR", "")):
            return self.get_response(request)
