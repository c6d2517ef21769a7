from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from mailgate.worker import Worker, run_once


class Command(BaseCommand):
    help = "Run the background worker: send queued mail, refresh tokens, fetch incoming mail."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--once", action="store_true", help="run every step once and exit")

    def handle(self, *args: Any, once: bool, **options: Any) -> None:
        if once:
            run_once()
            return
        worker = Worker(nice=settings.OPERATIONS.worker_nice)
        worker.install_signal_handlers()
        worker.run()
