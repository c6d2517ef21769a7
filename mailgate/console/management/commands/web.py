from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from mailgate.console.management.commands._base import add_listen_arguments
from mailgate.console.serve import serve


class Command(BaseCommand):
    help = "Serve the console and REST API only (run `mailgate worker` elsewhere)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        add_listen_arguments(parser)
        parser.add_argument(
            "--migrate", action="store_true", help="apply database migrations first"
        )

    def handle(self, *args: Any, host: str, port: int, migrate: bool, **options: Any) -> None:
        if migrate:
            from mailgate.console.serve import migrate as run_migrations

            run_migrations()
        serve(host, port, with_worker=False)
