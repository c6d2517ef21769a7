"""`mailgate audit [--json] [--limit N]`: the newest security events first."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from mailgate.audit.models import KINDS, AuditEvent


class Command(BaseCommand):
    help = "Show the audit log of security events (newest first); names only, never values."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument("--limit", type=int, default=100, help="how many events (default 100)")

    def handle(self, *args: Any, **options: Any) -> None:
        limit = options["limit"]
        if limit < 1:
            raise CommandError("--limit: give a positive number", returncode=2)
        events = list(AuditEvent.objects.all()[:limit])
        if options["json"]:
            self.stdout.write(json.dumps([e.as_dict() for e in events], indent=2))
            return
        if not events:
            self.stdout.write("No audit event.")
        for e in events:
            fields = f" ({', '.join(e.fields)})" if e.fields else ""
            who = e.actor or "-"
            where = f" from {e.address}" if e.address else ""
            line = f"{e.at:%Y-%m-%d %H:%M:%S}\t{KINDS.get(e.kind, e.kind)}\t{e.subject}{fields}"
            self.stdout.write(f"{line}\t{who}{where}")
