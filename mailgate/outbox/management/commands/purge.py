from __future__ import annotations

from argparse import ArgumentParser, ArgumentTypeError
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand

from mailgate.outbox.retention import purge_bodies


def days(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ArgumentTypeError(f"--older-than must be a number of days, not {value!r}") from None
    if number < 0 or number != number:
        raise ArgumentTypeError(f"--older-than must be 0 or more days, not {value}")
    return number


class Command(BaseCommand):
    help = (
        "Delete the content (body and attachments) of sent, failed and cancelled messages "
        "finished more than DAYS days ago; addresses, subject, status and attempts stay."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--older-than", type=days, required=True, metavar="DAYS", help="age in days"
        )

    def handle(self, *args: Any, older_than: float, **options: Any) -> None:
        purged = purge_bodies(timedelta(days=older_than))
        self.stdout.write(
            f"Purged the content of {purged} message{'s' if purged != 1 else ''} "
            f"finished more than {older_than:g} days ago."
        )
