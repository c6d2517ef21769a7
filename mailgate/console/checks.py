"""Django's deploy checks of the CSRF and session middleware, run against the console's chain.

Django looks for CsrfViewMiddleware and SessionMiddleware in MIDDLEWARE; mailgate lists them in
MAILGATE_CONSOLE_MIDDLEWARE, which ConsoleOnly runs for every request but the REST API's. Django's
"no CSRF middleware" warning (security.W003) is silenced in the settings for that reason, and these
checks run Django's own CSRF and session checks against the middleware a console request really
goes through, so an insecure cookie setting is still reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register
from django.core.checks.security import csrf, sessions
from django.test.utils import override_settings

CSRF_MIDDLEWARE = "django.middleware.csrf.CsrfViewMiddleware"
CHECKS: tuple[Callable[..., list[CheckMessage]], ...] = (
    csrf.check_csrf_cookie_secure,
    sessions.check_session_cookie_secure,
    sessions.check_session_cookie_httponly,
)


@register(Tags.security, deploy=True)
def console_middleware(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    chain = [*settings.MIDDLEWARE, *getattr(settings, "MAILGATE_CONSOLE_MIDDLEWARE", [])]
    found: list[CheckMessage] = []
    if CSRF_MIDDLEWARE not in chain:
        found.append(
            Warning(
                f"{CSRF_MIDDLEWARE} is in neither MIDDLEWARE nor MAILGATE_CONSOLE_MIDDLEWARE: the "
                "console's forms are not protected against cross-site request forgery.",
                hint="Add it back to MAILGATE_CONSOLE_MIDDLEWARE.",
                id="mailgate.W001",
            )
        )
    as_listed = [message for check in CHECKS for message in check(app_configs)]
    with override_settings(MIDDLEWARE=chain):
        as_run = [message for check in CHECKS for message in check(app_configs)]
    return found + [message for message in as_run if message not in as_listed]
