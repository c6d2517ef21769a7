"""`mailgate outbox list [--status S] [--json] | retry ID... | retry --status S | cancel ID... | cancel --status S`."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from rich.console import Console
from rich.table import Table

from mailgate.outbox.actions import ActionRefused, cancel_message, retry_message
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.progress import CommandProgress


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
            sub.add_argument("id", type=int, nargs="*", help="message ids")
            sub.add_argument(
                "--status",
                dest="with_status",
                choices=[s.value for s in Status],
                help=f"every message with this status (instead of ids), e.g. {name} --status "
                + ("failed" if name == "retry" else "deferred"),
            )

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "list":
            self._list(options["status"], options["limit"], options["json"])
            return
        operation = retry_message if action == "retry" else cancel_message
        ids: list[int] = list(options["id"])
        if options["with_status"]:
            if ids:
                raise CommandError("give message ids or --status, not both", returncode=2)
            ids = list(
                OutgoingMessage.objects.filter(status=options["with_status"])
                .order_by("id")
                .values_list("id", flat=True)
            )
        elif not ids:
            raise CommandError("give one or more message ids, or --status", returncode=2)
        refused = []
        # Many messages: a progress bar on the terminal (only the lines when piped).
        with CommandProgress(
            self.stdout,
            self.stderr,
            f"{action} {len(ids)} messages",
            len(ids),
            enabled=len(ids) > 1,
        ) as progress:
            for pk in ids:
                try:
                    message = operation(pk)
                except ActionRefused as exc:
                    refused.append(str(exc))
                    continue
                finally:
                    progress.advance()
                progress.line(f"message {message.pk}: {message.status}")
        if refused:
            raise CommandError("\n".join(refused), returncode=1)

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
