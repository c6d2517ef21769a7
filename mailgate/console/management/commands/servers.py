"""`mailgate servers list | add | export | import`: mail servers from the command line."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from mailgate.diagnostics.cli import TestServer
from mailgate.servers.cli import AddServer, ExportServers, ImportServers, ListServers, Subcommand

# One entry per subcommand. Other packages add theirs here, e.g. the connection test:
#   "test": mailgate.diagnostics' TestServer()  -> `mailgate servers test NAME`
SUBCOMMANDS: dict[str, Subcommand] = {
    "list": ListServers(),
    "add": AddServer(),
    "export": ExportServers(),
    "import": ImportServers(),
    "test": TestServer(),
}


class Command(BaseCommand):
    help = "Manage mail servers: " + ", ".join(SUBCOMMANDS) + "."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(
            dest="subcommand", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}"
        )
        for name, subcommand in SUBCOMMANDS.items():
            # No abbreviations: `--client-secret=...` must never be taken for another flag.
            subparser = sub.add_parser(name, help=subcommand.help, allow_abbrev=False)
            subcommand.add_arguments(subparser)

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        SUBCOMMANDS[subcommand].handle(self, options)
