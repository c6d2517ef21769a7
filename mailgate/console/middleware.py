"""Response headers every page carries (Django's SecurityMiddleware sets HSTS, nosniff, referrer)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


class ContentSecurityPolicy:
    """Adds MAILGATE_CONTENT_SECURITY_POLICY: no inline script, nothing loaded from elsewhere."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault(
            "Content-Security-Policy", settings.MAILGATE_CONTENT_SECURITY_POLICY
        )
        return response
