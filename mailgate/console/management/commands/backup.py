"""`mailgate backup FILE`: a consistent copy of the SQLite database while mailgate runs."""

from __future__ import annotations

import os
import sqlite3
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections


class Command(BaseCommand):
    help = (
        "Copy the SQLite database to FILE with SQLite's online backup (safe while web and worker "
        "run). For PostgreSQL use pg_dump. The copy holds encrypted secrets: back up "
        "MAILGATE_HOME/encryption_keys (or MAILGATE_ENCRYPTION_KEYS) separately."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("file", help="where to write the copy (must not exist)")

    def handle(self, *args: Any, file: str, **options: Any) -> None:
        database = settings.DATABASES["default"]
        if connections["default"].vendor != "sqlite":  # any SQLite backend (mailgate.dbsqlite)
            raise CommandError(
                "the database is PostgreSQL: back it up with pg_dump, e.g. "
                "pg_dump --format=custom --file=mailgate.dump DBNAME"
            )
        target = Path(file).expanduser().resolve()
        if target.exists():
            raise CommandError(f"FILE: {target} exists; choose a new name (nothing was written)")
        if not target.parent.is_dir():
            raise CommandError(f"FILE: the folder {target.parent} does not exist")
        source = sqlite3.connect(str(database["NAME"]), timeout=30)
        try:
            # The copy is created 0600: it holds the (encrypted) secrets and the message bodies.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            copy = sqlite3.connect(str(target))
            try:
                with copy:
                    source.backup(copy)
                check = copy.execute("PRAGMA integrity_check").fetchone()
            finally:
                copy.close()
        finally:
            source.close()
        if not check or check[0] != "ok":
            raise CommandError(f"the copy at {target} failed its integrity check: {check}")
        size = target.stat().st_size
        self.stdout.write(f"Backed up {database['NAME']} to {target} ({size:,} bytes).")
