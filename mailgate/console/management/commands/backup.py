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

from mailgate.console.management.commands._base import bad_input


class Command(BaseCommand):
    help = (
        "Copy the SQLite database to FILE with SQLite's online backup (safe while web and worker "
        "run). For PostgreSQL use pg_dump. The copy holds encrypted secrets: back up "
        "MAILGATE_HOME/encryption_keys (or MAILGATE_ENCRYPTION_KEYS) separately. Exit status 2 "
        "for a bad FILE or a PostgreSQL database, 1 when the copy fails."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("file", help="where to write the copy (must not exist)")

    def handle(self, *args: Any, file: str, **options: Any) -> None:
        database = settings.DATABASES["default"]
        if connections["default"].vendor != "sqlite":  # any SQLite backend (mailgate.dbsqlite)
            raise bad_input(
                "the database is PostgreSQL: back it up with pg_dump, e.g. "
                "pg_dump --format=custom --file=mailgate.dump DBNAME"
            )
        target = Path(file).expanduser().resolve()
        if target.exists():
            raise bad_input(f"FILE: {target} exists; choose a new name (nothing was written)")
        if not target.parent.is_dir():
            raise bad_input(f"FILE: the folder {target.parent} does not exist")
        try:
            # The copy is created 0600: it holds the (encrypted) secrets and the message bodies.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise bad_input(f"FILE: cannot create {target}: {exc.strerror}") from None
        os.close(fd)
        try:
            check = _copy(str(database["NAME"]), target)
        except (sqlite3.Error, OSError) as exc:  # the disk filled up, the database went away
            target.unlink(missing_ok=True)
            raise CommandError(f"the copy failed, nothing was kept: {exc}") from None
        if not check or check[0] != "ok":
            raise CommandError(f"the copy at {target} failed its integrity check: {check}")
        size = target.stat().st_size
        self.stdout.write(f"Backed up {database['NAME']} to {target} ({size:,} bytes).")


def _copy(source_name: str, target: Path) -> tuple[str, ...] | None:
    """SQLite's online backup of `source_name` into `target`; the copy's integrity check."""
    source = sqlite3.connect(source_name, timeout=30)
    try:
        copy = sqlite3.connect(str(target))
        try:
            with copy:
                source.backup(copy)
            row: tuple[str, ...] | None = copy.execute("PRAGMA integrity_check").fetchone()
            return row
        finally:
            copy.close()
    finally:
        source.close()
