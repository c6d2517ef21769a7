"""WSGI entry point for production servers (waitress through `mailgate web`, or gunicorn
mailgate.wsgi), behind MAILGATE_TRUSTED_PROXIES when a reverse proxy forwards the requests."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailgate.settings")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# The headers a proxy sets; from any other peer they are removed before Django sees the request.
FORWARDED_HEADERS = (
    "HTTP_FORWARDED",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_REAL_IP",
)


class TrustedProxies:
    """Takes the client's address and scheme from X-Forwarded-For / -Proto only when the request
    comes from a trusted proxy; the client is the rightmost forwarded address that is not itself a
    trusted proxy. From any other peer the forwarded headers are dropped, so nobody can claim
    another address or https by sending them."""

    def __init__(self, app: WSGIApp, networks: Sequence[str]) -> None:
        self.app = app
        self.networks = [ipaddress.ip_network(n) for n in networks]

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if self.networks and self.is_trusted(environ.get("REMOTE_ADDR", "")):
            chain = [a.strip() for a in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
            for address in reversed([a for a in chain if a]):
                try:
                    ipaddress.ip_address(address.strip("[]"))
                except ValueError:
                    break
                environ["REMOTE_ADDR"] = address.strip("[]")
                if not self.is_trusted(address):
                    break
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
                environ["HTTP_X_FORWARDED_PROTO"] = proto
        else:
            for name in FORWARDED_HEADERS:
                environ.pop(name, None)
        return self.app(environ, start_response)


def build_application() -> WSGIApp:
    from django.conf import settings

    django_app = get_wsgi_application()
    return TrustedProxies(django_app, settings.MAILGATE_TRUSTED_PROXIES)


application = build_application()
