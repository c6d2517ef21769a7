"""`mailgate fetch [--server NAME] [--json]`: fetch every incoming server once and exit (1 when one
failed). A progress bar on a terminal; piped or with --json only the results."""

from __future__ import annotations

import json
import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from mailgate.inbox.fetcher import FetchReport, fetch_server, incoming_servers
from mailgate.inbox.handoff import hand_off
from mailgate.progress import CommandProgress
from mailgate.servers.models import MailServer


class Command(BaseCommand):
    help = (
        "Fetch new mail from every server with Incoming Mail (or one) once, hand it off, and exit; "
        "exit status 1 when a server failed."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--server", metavar="NAME", help="only this server (its description)")
        parser.add_argument(
            "--json", action="store_true", help="print one JSON list of the results at the end"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options.get("server")
        as_json = bool(options.get("json"))
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
                self.stdout.write("[]" if as_json else "No server has Incoming Mail.")
                return
        reports: list[FetchReport] = []
        with CommandProgress(
            self.stdout, self.stderr, "Fetching", len(servers), enabled=not as_json
        ) as progress:
            for server in servers:
                progress.update(description=f"Fetching {server.name}")
                report = fetch_server(server)
                reports.append(report)
                if not as_json:
                    self._print(report, progress)
                progress.advance()
        hand_off()
        if as_json:
            self.stdout.write(json.dumps([_as_dict(r) for r in reports], indent=2))
        if any(not r.ok for r in reports):
            sys.exit(1)

    def _print(self, report: FetchReport, progress: CommandProgress) -> None:
        if report.skipped:
            progress.line(f"{report.server}: skipped, {report.skipped}")
            return
        for folder, count in report.counts.items():
            where = f"{report.server} {folder}" if folder else report.server
            progress.line(f"{where}: {count} new message{'s' if count != 1 else ''}")
        if not report.ok:
            progress.error(f"{report.server}: failed: {report.error}")
            if report.diagnosis:
                progress.error(f"  {report.diagnosis}")


def _as_dict(report: FetchReport) -> dict[str, object]:
    return {
        "server": report.server,
        "ok": report.ok,
        "new": report.total,
        "folders": report.counts,
        "skipped": report.skipped,
        "error": report.error,
        "diagnosis": report.diagnosis,
    }
