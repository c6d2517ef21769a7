from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from mailgate.accounts.users import ensure_first_admin
from mailgate.console.management.commands._base import add_listen_arguments
from mailgate.console.serve import migrate, serve


class Command(BaseCommand):
    help = (
        "Migrate, ensure a first administrator, serve the console and API, and run one worker "
        "(and the SMTP relay when MAILGATE_SMTP_LISTEN is set)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        add_listen_arguments(parser)

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        migrate()
        message = ensure_first_admin(settings.CONFIG.admin_email, settings.CONFIG.admin_password)
        if message:
            self.stdout.write(message)
        serve(host, port, with_worker=True, with_relay=True)
