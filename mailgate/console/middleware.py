"""Response headers every page carries (Django's SecurityMiddleware sets HSTS, nosniff, referrer)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse


class ContentSecurityPolicy:
    """Adds MAILGATE_CONTENT_SECURITY_POLICY: no inline script, nothing loaded from elsewhere."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", policy())
        return response


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def policy() -> str:
    """The policy, with form-action: forms post here only, except that Connect's answer
    redirects to the identity providers' sign-in pages (browsers hold a form's redirect to
    form-action too)."""
    sign_in = sorted(
        {_origin(settings.MAILGATE_MICROSOFT_LOGIN_URL), _origin(settings.MAILGATE_GOOGLE_AUTH_URL)}
    )
    return f"{settings.MAILGATE_CONTENT_SECURITY_POLICY}; form-action 'self' {' '.join(sign_in)}"
