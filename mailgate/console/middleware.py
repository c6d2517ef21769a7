"""Response headers every page carries (Django's SecurityMiddleware sets HSTS, nosniff, referrer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string


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


# The REST API authenticates every call by its key: it has no session, no CSRF token (no cookie
# is read), no signed-in user and no flash messages, so its requests skip that middleware. Its docs
# page is a page like the console's (its template asks for the user), so it keeps it.
API_PREFIX = "/api/"
API_PAGES = ("/api/v1/docs",)


class ConsoleOnly:
    """Runs MAILGATE_CONSOLE_MIDDLEWARE (sessions, CSRF, sign-in, messages) for console requests
    only; a request under API_PREFIX goes straight on to the view.

    Django collects process_view/process_exception hooks from the middleware it builds itself, so
    this wrapper offers the wrapped middleware's hooks as its own and calls them for console
    requests only: CSRF checking and LoginRequiredMiddleware work as when listed in MIDDLEWARE.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self._view_hooks: list[Callable[..., HttpResponse | None]] = []
        self._exception_hooks: list[Callable[..., HttpResponse | None]] = []
        handler: Callable[[HttpRequest], Any] = get_response
        for path in reversed(settings.MAILGATE_CONSOLE_MIDDLEWARE):
            instance = import_string(path)(handler)
            if hasattr(instance, "process_view"):
                self._view_hooks.insert(0, instance.process_view)
            if hasattr(instance, "process_exception"):
                self._exception_hooks.append(instance.process_exception)
            handler = convert_exception_to_response(instance)
        self.console = handler

    @staticmethod
    def is_api(request: HttpRequest) -> bool:
        path = request.path_info
        return path.startswith(API_PREFIX) and not path.startswith(API_PAGES)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.is_api(request):
            return self.get_response(request)
        return self.console(request)

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
    ) -> HttpResponse | None:
        if self.is_api(request):
            return None
        for hook in self._view_hooks:
            response = hook(request, view, args, kwargs)
            if response is not None:
                return response
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if self.is_api(request):
            return None
        for hook in self._exception_hooks:
            response = hook(request, exception)
            if response is not None:
                return response
        return None
