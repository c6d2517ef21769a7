"""`mailgate api-keys create --name N [--scope {send,read,admin}] | list [--json] | revoke NAME`."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from mailgate.api.models import SCOPES, SEND, APIKey


def _when(value: Any) -> str | None:
    return value.isoformat() if value else None


class Command(BaseCommand):
    help = "Create, list and revoke REST API keys (a new key is printed once)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
        create = sub.add_parser("create", help="create a key and print it once")
        create.add_argument("--name", required=True, help="what uses the key, e.g. erp")
        create.add_argument(
            "--scope",
            choices=list(SCOPES),
            default=SEND,
            help="send: queue mail and read what it queued (default); read: read all messages "
            "and servers; admin: both",
        )
        listing = sub.add_parser("list", help="list keys (never the keys themselves)")
        listing.add_argument("--json", action="store_true", help="print JSON")
        revoke = sub.add_parser("revoke", help="revoke a key by name")
        revoke.add_argument("name")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "create":
            name = options["name"].strip()
            if not name or len(name) > 100:
                raise CommandError("--name: give a name of 1 to 100 characters", returncode=2)
            if APIKey.objects.filter(name__iexact=name).exists():
                raise CommandError(
                    f"--name: a key named {name!r} exists already; choose another name or "
                    f"revoke it with `mailgate api-keys revoke {name}`",
                    returncode=2,
                )
            row, key = APIKey.issue(name, scope=options["scope"])
            self.stderr.write(
                f"API key {row.name!r} (scope {row.scope}) created; it is shown only now:"
            )
            self.stdout.write(key)
        elif action == "list":
            keys = list(APIKey.objects.all())
            rows = [
                {
                    "name": k.name,
                    "prefix": k.prefix,
                    "scope": k.scope,
                    "created_at": _when(k.created_at),
                    "last_used_at": _when(k.last_used_at),
                    "revoked_at": _when(k.revoked_at),
                }
                for k in keys
            ]
            if options["json"]:
                self.stdout.write(json.dumps(rows, indent=2))
                return
            if not rows:
                self.stdout.write("No API key.")
            for r in rows:
                state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
                used = r["last_used_at"] or "never used"
                self.stdout.write(f"{r['name']}\t{r['prefix']}…\t{r['scope']}\t{state}\t{used}")
        else:
            found = APIKey.objects.filter(name=options["name"]).first()
            if found is None:
                raise CommandError(
                    f"NAME: no API key named {options['name']!r} (see `mailgate api-keys list`)",
                    returncode=2,
                )
            found.revoke()
            self.stdout.write(f"API key {found.name!r} revoked.")
