"""A database of a test's own, for tests that run mailgate in other processes (workers, migrations).

Both kinds are created whatever MAILGATE_DATABASE_URL says, so the SQLite pass covers PostgreSQL too.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def own_database(kind: str, folder: Path, prefix: str) -> Iterator[str]:
    """The URL of a new empty database ("sqlite" file in `folder`, or "postgresql"), dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{folder}/mailgate.sqlite3"
        return
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def process_env(url: str, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a mailgate process working on `url`."""
    return {
        **os.environ,
        "MAILGATE_DATABASE_URL": url,
        "MAILGATE_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement directly (no Django), `%s` placeholders; the rows, if any."""
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)
        try:
            with db:
                return db.execute(sql.replace("%s", "?"), params).fetchall()
        finally:
            db.close()
    with psycopg.connect(url) as db:
        cursor = db.execute(sql, params)
        return cursor.fetchall() if cursor.description else []
