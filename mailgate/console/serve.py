"""Serving the console with a production WSGI server (waitress), optionally beside a worker thread."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management import call_command
from waitress.server import create_server

from mailgate.conf import listen_url
from mailgate.console.relay import configured_relay, describe
from mailgate.servers.forms import redirect_urls
from mailgate.servers.models import AUTH_METHODS
from mailgate.wsgi import application

log = logging.getLogger("mailgate.web")


def migrate() -> None:
    call_command("migrate", interactive=False, verbosity=0)
    call_command("createcachetable", verbosity=0)


def adopt_listen_url(host: str, port: int) -> str:
    """Without MAILGATE_PUBLIC_URL, the public URL is where this process listens; return it.

    So the OAuth2 Redirect URL shown in the form is the one the browser comes back to, whatever
    --host / --port say.
    """
    if not settings.CONFIG.public_url_explicit:
        url = listen_url(host, port)
        settings.CONFIG = dataclasses.replace(settings.CONFIG, public_url=url)
        settings.MAILGATE_PUBLIC_URL = url
        settings.CSRF_TRUSTED_ORIGINS = [url]
    return str(settings.MAILGATE_PUBLIC_URL)


def wildcard_without_public_url(host: str) -> bool:
    return host in ("0.0.0.0", "::", "") and not settings.CONFIG.public_url_explicit


def wildcard_warning(port: int) -> str:
    """What to do when listening on every address without a public URL: the console then answers
    only as 127.0.0.1 (a browser on another machine gets 400 Bad Request), and the OAuth2 redirect
    URL names 127.0.0.1, which only a browser on this machine can reach."""
    return (
        f"mailgate: listening on every address, but without MAILGATE_PUBLIC_URL the console answers "
        f"only at http://127.0.0.1:{port}/ (other host names get 400 Bad Request) and the OAuth2 "
        f"redirect URL names 127.0.0.1. Set MAILGATE_PUBLIC_URL to the address browsers use, e.g. "
        f"MAILGATE_PUBLIC_URL=https://mail.corp.example (behind a TLS proxy), and register that "
        f"redirect URL in Azure / Google."
    )


def describe_redirect_urls() -> str:
    """The lines that tell which OAuth2 Redirect URL each provider's app registration must have."""
    return "\n".join(
        f"  {AUTH_METHODS[key].label}: register the redirect URL {url}"
        for key, url in redirect_urls().items()
        if url
    )


# Request headers and the JSON around a message's base64 body, beyond Django's own upload limit.
BODY_OVERHEAD = 64 * 1024


def make_server(host: str, port: int, app: Any = application) -> Any:
    """The waitress server: a request body larger than the largest message the API accepts
    (DATA_UPLOAD_MAX_MEMORY_SIZE) plus overhead is refused with 413 before it is buffered.

    Forwarded headers are left to mailgate.wsgi.TrustedProxies, which believes them from the
    MAILGATE_TRUSTED_PROXIES networks (waitress trusts one address only) and drops them otherwise.
    """
    return create_server(
        app,
        host=host,
        port=port,
        threads=settings.OPERATIONS.web_threads,
        connection_limit=settings.OPERATIONS.web_connection_limit,
        ident="mailgate",
        max_request_body_size=settings.DATA_UPLOAD_MAX_MEMORY_SIZE + BODY_OVERHEAD,
        clear_untrusted_proxy_headers=False,
    )


def serve(host: str, port: int, *, with_worker: bool, with_relay: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; with_worker runs the worker loop in a thread of this process,
    with_relay the SMTP relay when MAILGATE_SMTP_LISTEN (or MAILGATE_SMTPS_LISTEN) is set."""
    if host not in ("0.0.0.0", "::", "") and host not in settings.ALLOWED_HOSTS:
        # The address it was told to listen on is a name clients use for it.
        settings.ALLOWED_HOSTS.append(f"[{host}]" if ":" in host else host)
    server = make_server(host, port)
    relay = None
    if with_relay:
        try:
            relay = configured_relay()
            if relay is not None:
                relay.start()
        except (OSError, ValueError) as exc:
            server.close()
            raise SystemExit(f"mailgate: the SMTP relay cannot start: {exc}") from None
    if relay is not None:
        print(describe(relay), flush=True)
    worker = None
    thread = None
    if with_worker:
        from mailgate.worker import Worker

        worker = Worker(nice=settings.OPERATIONS.worker_nice)
        thread = threading.Thread(target=worker.run, name="mailgate-worker", daemon=True)
        thread.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping")
        if worker is not None:
            worker.stop()
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    public_url = adopt_listen_url(host, port)
    print(f"mailgate: serving on http://{host}:{port}/ (console: {public_url}/)", flush=True)
    if wildcard_without_public_url(host):
        print(wildcard_warning(port), flush=True)
    print(describe_redirect_urls(), flush=True)
    with contextlib.suppress(OSError, ValueError):  # the listening socket was closed by stop()
        server.run()
    if relay is not None:
        relay.stop()
    if thread is not None:
        thread.join(timeout=30)
