"""`mailgate send`: queue one message; with --wait, wait for its outcome (exit codes in its --help and the README)."""

from __future__ import annotations

import mimetypes
import sys
import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from mailgate.outbox.compose import Attachment, InvalidMessage
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.outbox.submit import enqueue

EXIT_SENT, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TIMEOUT = 0, 1, 2, 3


class Command(BaseCommand):
    help = "Queue a message; with --wait, exit 0 once sent, 1 if failed or held, 2 on bad input, 3 if still queued at the timeout."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--from", dest="sender", required=True, metavar="ADDRESS")
        parser.add_argument("--to", action="append", default=[], metavar="ADDRESS")
        parser.add_argument("--cc", action="append", default=[], metavar="ADDRESS")
        parser.add_argument("--bcc", action="append", default=[], metavar="ADDRESS")
        parser.add_argument("--reply-to", default=None, metavar="ADDRESS")
        parser.add_argument("--subject", default="")
        body = parser.add_mutually_exclusive_group()
        body.add_argument("--body", default=None, help="the text body")
        body.add_argument(
            "--body-file", default=None, help="read the text body from a file (- for stdin)"
        )
        parser.add_argument("--html-file", default=None, help="an HTML alternative from a file")
        parser.add_argument("--attach", action="append", default=[], metavar="FILE")
        parser.add_argument(
            "--server", default=None, help="a server name (default: by From Filter)"
        )
        parser.add_argument(
            "--wait", action="store_true", help="wait until the message is sent or fails"
        )
        parser.add_argument(
            "--timeout", type=float, default=60.0, help="seconds to wait (default 60)"
        )

    def _read(self, option: str, path: str) -> str:
        if path == "-":
            return sys.stdin.read()
        try:
            return Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(
                f"{option}: cannot read {path}: {exc}", returncode=EXIT_BAD_INPUT
            ) from None

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["to"] and not options["cc"] and not options["bcc"]:
            raise CommandError("--to: give at least one recipient", returncode=EXIT_BAD_INPUT)
        if options["timeout"] <= 0:
            raise CommandError(
                "--timeout: must be a positive number of seconds", returncode=EXIT_BAD_INPUT
            )
        text = options["body"]
        if options["body_file"]:
            text = self._read("--body-file", options["body_file"])
        html = self._read("--html-file", options["html_file"]) if options["html_file"] else None
        attachments = []
        for name in options["attach"]:
            path = Path(name)
            try:
                content = path.read_bytes()
            except OSError as exc:
                raise CommandError(
                    f"--attach: cannot read {name}: {exc.strerror}", returncode=EXIT_BAD_INPUT
                ) from None
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            attachments.append(Attachment(path.name, content, content_type))
        try:
            message = enqueue(
                from_address=options["sender"],
                to=options["to"],
                cc=options["cc"],
                bcc=options["bcc"],
                reply_to=options["reply_to"],
                subject=options["subject"],
                text=text if text is not None else ("" if html is None else None),
                html=html,
                attachments=attachments,
                server=options["server"],
                source="cli",
            )
        except InvalidMessage as exc:
            flags = {
                "from": "--from",
                "to": "--to",
                "cc": "--cc",
                "bcc": "--bcc",
                "reply_to": "--reply-to",
                "subject": "--subject",
                "attachments": "--attach",
                "text": "--body",
                "server": "--server",
            }
            problems = []
            for field_name, problem in exc.errors.items():
                base = field_name.split("[", 1)[0].split(".", 1)[0]
                problems.append(f"{flags.get(base, field_name)} ({field_name}): {problem}")
            raise CommandError("; ".join(problems), returncode=EXIT_BAD_INPUT) from None
        self.stdout.write(
            f"queued message {message.pk} {message.message_id} via {message.server.name}"
            + (f" ({message.route_reason})" if message.route_reason else "")
        )
        if not options["wait"]:
            return
        deadline = time.monotonic() + options["timeout"]
        while True:
            message = OutgoingMessage.objects.get(pk=message.pk)
            if message.status == Status.SENT:
                self.stdout.write(f"sent: {message.last_reply}")
                return
            if message.status in (Status.FAILED, Status.HELD, Status.CANCELLED):
                detail = message.last_reply or message.last_error
                raise CommandError(
                    f"message {message.pk} {message.status}: {detail} {message.diagnosis}".strip(),
                    returncode=EXIT_FAILED,
                )
            if time.monotonic() >= deadline:
                raise CommandError(
                    f"message {message.pk} still {message.status} after {options['timeout']:g} s "
                    f"(attempts: {message.attempts}; is `mailgate worker` running?)",
                    returncode=EXIT_TIMEOUT,
                )
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
