"""`mailgate fetch [--server NAME]`: fetch every incoming server once and exit (1 when one failed)."""

from __future__ import annotations

import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from mailgate.inbox.fetcher import fetch_all, incoming_servers
from mailgate.inbox.handoff import hand_off
from mailgate.servers.models import MailServer


class Command(BaseCommand):
    help = (
        "Fetch new mail from every server with Incoming Mail (or one) once, hand it off, and exit; "
        "exit status 1 when a server failed."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--server", metavar="NAME", help="only this server (its description)")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options.get("server")
        if name:
            server = MailServer.objects.filter(name=name).first()
            if server is None:
                raise CommandError(f"--server: no mail server named {name!r}", returncode=2)
            if not server.has_incoming:
                raise CommandError(
                    f"--server: {name!r} has no Incoming Mail (choose IMAP or POP3 first)",
                    returncode=2,
                )
            servers = [server]
        else:
            servers = incoming_servers()
            if not servers:
                self.stdout.write("No server has Incoming Mail.")
                return
        failed = False
        for report in fetch_all(servers=servers):
            if report.skipped:
                self.stdout.write(f"{report.server}: skipped, {report.skipped}")
                continue
            for folder, count in report.counts.items():
                where = f"{report.server} {folder}" if folder else report.server
                self.stdout.write(f"{where}: {count} new message{'s' if count != 1 else ''}")
            if not report.ok:
                failed = True
                self.stderr.write(f"{report.server}: failed: {report.error}")
                if report.diagnosis:
                    self.stderr.write(f"  {report.diagnosis}")
        hand_off()
        if failed:
            sys.exit(1)
