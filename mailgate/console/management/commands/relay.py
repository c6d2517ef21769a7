from __future__ import annotations

import signal
import threading
from argparse import ArgumentParser
from dataclasses import replace
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mailgate.conf import RelayConfig, SettingsError, parse_listen
from mailgate.console.management.commands._base import bad_input
from mailgate.console.relay import configured_relay, describe


class Command(BaseCommand):
    help = (
        "Serve the SMTP relay for applications (MAILGATE_SMTP_LISTEN, MAILGATE_SMTPS_LISTEN) "
        "until SIGTERM. Exit status 2 for a bad --listen or setting, 1 when it cannot listen."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--listen", help="host:port, instead of MAILGATE_SMTP_LISTEN")
        parser.add_argument("--listen-tls", help="host:port, instead of MAILGATE_SMTPS_LISTEN")

    def handle(
        self, *args: Any, listen: str | None, listen_tls: str | None, **options: Any
    ) -> None:
        config = settings.MAILGATE_RELAY or RelayConfig()
        try:
            if listen:
                config = replace(config, listen=parse_listen("--listen", listen))
            if listen_tls:
                config = replace(config, listen_tls=parse_listen("--listen-tls", listen_tls))
            relay = configured_relay(config)
        except (SettingsError, ValueError) as exc:
            raise bad_input(str(exc)) from None
        if relay is None:
            raise bad_input(
                "MAILGATE_SMTP_LISTEN is not set: set it to host:port (such as 0.0.0.0:587), "
                "or give --listen"
            )
        stopping = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            relay.start()
        except OSError as exc:
            raise CommandError(f"the SMTP relay cannot listen: {exc}") from None
        self.stdout.write(describe(relay))
        self.stdout.flush()
        stopping.wait()
        relay.stop()
