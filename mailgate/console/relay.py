"""Starting the SMTP relay from the settings, for `mailgate relay` and `mailgate run`."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from django.conf import settings

from mailgate.conf import RelayConfig
from mailgate.relay.server import Relay
from mailgate.relay.tls import server_context

log = logging.getLogger("mailgate.relay")


def configured_relay(config: RelayConfig | None = None) -> Relay | None:
    """The relay the settings ask for (MAILGATE_SMTP_LISTEN / MAILGATE_SMTPS_LISTEN), not yet
    started; None when neither is set."""
    config = config or settings.MAILGATE_RELAY
    if config is None or (config.listen is None and config.listen_tls is None):
        return None
    hostname = urlsplit(settings.MAILGATE_PUBLIC_URL).hostname or "localhost"
    context = server_context(
        config.tls_cert, config.tls_key, home=settings.MAILGATE_HOME, hostname=hostname
    )
    return Relay(
        config.listen,
        context,
        listen_tls=config.listen_tls,
        plain_on_loopback=config.plain_on_loopback,
        hostname=hostname,
    )


def describe(relay: Relay) -> str:
    parts = []
    if relay.listen is not None:
        parts.append(f"smtp://{relay.listen[0]}:{relay.port} (STARTTLS)")
    if relay.listen_tls is not None:
        parts.append(f"smtps://{relay.listen_tls[0]}:{relay.tls_port} (implicit TLS)")
    return "mailgate: SMTP relay on " + ", ".join(parts)
