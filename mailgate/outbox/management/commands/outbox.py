"""`mailgate outbox list [--status S] [--json] | retry ID | cancel ID`."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from rich.console import Console
from rich.table import Table

from mailgate.outbox.actions import ActionRefused, cancel_message, retry_message
from mailgate.outbox.models import OutgoingMessage, Status


class Command(BaseCommand):
    help = "List, retry or cancel outgoing messages."

    def add_arguments(self, parser: ArgumentParser) -> None:
        commands = parser.add_subparsers(
            dest="action", required=True, metavar="{list,retry,cancel}"
        )
        listing = commands.add_parser("list", help="the newest messages")
        listing.add_argument("--status", choices=[s.value for s in Status])
        listing.add_argument("--limit", type=int, default=100)
        listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
        for name, what in (
            ("retry", "queue a failed/cancelled/deferred message now"),
            ("cancel", "cancel a waiting message"),
        ):
            sub = commands.add_parser(name, help=what)
            sub.add_argument("id", type=int)

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "list":
            self._list(options["status"], options["limit"], options["json"])
            return
        operation = retry_message if action == "retry" else cancel_message
        try:
            message = operation(options["id"])
        except ActionRefused as exc:
            raise CommandError(str(exc), returncode=1) from None
        self.stdout.write(f"message {message.pk}: {message.status}")

    def _list(self, status: str | None, limit: int, as_json: bool) -> None:
        if limit < 1:
            raise CommandError("--limit: must be at least 1", returncode=2)
        messages = OutgoingMessage.objects.select_related("server").order_by("-created_at", "-id")
        if status:
            messages = messages.filter(status=status)
        rows = list(messages[:limit])
        if as_json:
            self.stdout.write(
                json.dumps(
                    [
                        {
                            "id": m.pk,
                            "status": m.status,
                            "message_id": m.message_id,
                            "server": m.server.name,
                            "from": m.from_address,
                            "to": m.to,
                            "subject": m.subject,
                            "attempts": m.attempts,
                            "last_error": m.last_error,
                            "created_at": m.created_at.isoformat(),
                        }
                        for m in rows
                    ],
                    indent=2,
                )
            )
            return
        table = Table(
            "ID", "Status", "Created", "Server", "From", "To", "Subject", "Attempts", "Last error"
        )
        for m in rows:
            table.add_row(
                str(m.pk),
                m.status,
                f"{m.created_at:%Y-%m-%d %H:%M}",
                m.server.name,
                m.from_address,
                ", ".join(m.to)[:40],
                m.subject[:40],
                str(m.attempts),
                (m.last_reply or m.last_error)[:60],
            )
        Console(file=self.stdout, width=160).print(table)  # type: ignore[arg-type]
