"""`mailgate servers test NAME`: the connection test from the command line (exit 1 when it fails)."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from mailgate.diagnostics.connection import run_connection_test
from mailgate.servers.cli import Subcommand
from mailgate.servers.models import MailServer


class TestServer(Subcommand):
    """Run the connection test of one server and print each step."""

    __test__ = False  # not a pytest test class
    help = "run the connection test of a server (token, SMTP, incoming); exit 1 on failure"

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name", help="the server's Mail Server Description")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, command: BaseCommand, options: dict[str, Any]) -> None:
        name = options["name"]
        server = MailServer.objects.filter(name=name).first()
        if server is None:
            known = ", ".join(MailServer.objects.values_list("name", flat=True)) or "none yet"
            raise CommandError(
                f"NAME: no mail server named {name!r} (known: {known}); "
                "see `mailgate servers list`",
                returncode=2,
            )
        result = run_connection_test(server)
        if options["json"]:
            command.stdout.write(
                json.dumps(
                    {
                        "server": server.name,
                        "ok": result.ok,
                        "headline": result.headline,
                        "steps": [
                            {
                                "name": s.name,
                                "ok": s.ok,
                                "detail": s.detail,
                                "diagnosis": s.diagnosis,
                            }
                            for s in result.steps
                        ],
                    },
                    indent=2,
                )
            )
        else:
            command.stdout.write(result.headline)
            command.stdout.write(result.summary())
        if not result.ok:
            raise CommandError(result.headline, returncode=1)
