"""The outbox's hot tables carry the indexes their queries need and no others (migration 0004).

Every index costs each delivered message's UPDATE (a status change, so not a HOT update on
PostgreSQL) and each attempt's INSERT.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from tests.outbox.own_database import ROOT, own_database, process_env, query

MESSAGES = "outbox_outgoingmessage"
ATTEMPTS = "outbox_deliveryattempt"

# Columns of each index (primary keys aside), and which query it serves.
EXPECTED = {
    MESSAGES: {
        # the worker's due queries: servers_with_due_mail(), API/console filter by status
        ("status", "next_attempt_at"),
        # due_candidates() per server; every server_id filter (console, hold, health, PROTECT)
        ("server_id", "status", "next_attempt_at"),
        ("created_at",),  # newest first: console, API and CLI lists
        ("message_id",),
        ("idempotency_key",),  # unique where not null; the idempotent-retry lookup
    },
    ATTEMPTS: {
        ("server_id", "started_at"),  # per-minute and per-day limits; CASCADE of a server
        ("message_id",),  # one message's attempts (detail page, API); CASCADE of a message
    },
}


def indexes(table: str) -> dict[str, tuple[str, ...]]:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    return {
        name: tuple(c["columns"])
        for name, c in constraints.items()
        if c["index"] and not c["primary_key"]
    }


@pytest.mark.django_db
@pytest.mark.parametrize("table", [MESSAGES, ATTEMPTS])
def test_each_table_has_exactly_the_indexes_its_queries_use(table):
    found = indexes(table)
    # A list, not a set: on PostgreSQL a `_like` twin would repeat its column.
    assert sorted(found.values()) == sorted(EXPECTED[table]), found
    assert ("server_id",) not in found.values()


@pytest.mark.django_db
def test_the_composite_indexes_keep_their_names_and_column_order():
    assert indexes(MESSAGES)["outbox_server_due_idx"] == ("server_id", "status", "next_attempt_at")
    assert indexes(MESSAGES)["outbox_due_idx"] == ("status", "next_attempt_at")
    assert indexes(ATTEMPTS)["attempt_server_time_idx"] == ("server_id", "started_at")
    with connection.cursor() as cursor:
        unique = connection.introspection.get_constraints(cursor, MESSAGES)
    assert unique["outbox_idempotency_key_uniq"]["unique"] is True


# -- the upgrade of an existing database, read from the database's own catalog -------------------


class Database:
    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.env = process_env(url, home, DJANGO_SETTINGS_MODULE="mailgate.settings")

    def migrate(self, *target: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "django", "migrate", *target, "--verbosity=0"],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        return query(self.url, sql, params)

    def index_definitions(self, table: str) -> dict[str, str]:
        """Index name -> its column list (and WHERE), as the database has it."""
        if self.url.startswith("sqlite"):
            rows = self.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = %s",
                (table,),
            )
            return {
                name: sql.split(f'ON "{table}" ', 1)[1].replace('"', "") if sql else "(implicit)"
                for name, sql in rows
            }
        rows = self.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", (table,)
        )
        return {name: re.sub(r"^.* USING btree ", "", sql) for name, sql in rows}

    def run(self, code: str) -> None:
        """Python with Django set up against this database (the models of the working tree)."""
        prelude = "import django\ndjango.setup()\n"
        done = subprocess.run(
            [sys.executable, "-c", prelude + code],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()


# Three messages written with the models as of 0003: one with an idempotency key, two without.
SEED = """
from django.db import connection
from django.db.migrations.loader import MigrationLoader

state = MigrationLoader(connection).project_state(("outbox", "0003_pending_recipients"))
server = state.apps.get_model("servers", "MailServer").objects.create(name="old")
message = state.apps.get_model("outbox", "OutgoingMessage")
for i, key in enumerate(["apikey:1:order-1", None, None]):
    message.objects.create(
        server=server, from_address="a@example.com", message_id=f"<{i}@x>", raw=b"x",
        idempotency_key=key,
    )
"""


# Databases of their own (like test_workers.py), so both run whatever MAILGATE_DATABASE_URL says.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres_only)])
def database(request, tmp_path) -> Iterator[Database]:
    with own_database(request.param, tmp_path, "mg_outbox_indexes") as url:
        yield Database(url, tmp_path)


@pytest.mark.nodb
def test_an_existing_outbox_loses_only_the_redundant_indexes_and_keeps_its_keys(database):
    postgres = not database.url.startswith("sqlite")
    database.migrate("outbox", "0003")
    database.run(SEED)
    before = database.index_definitions(MESSAGES)
    assert "(server_id)" in before.values()
    if postgres:
        assert "(message_id varchar_pattern_ops)" in before.values()

    database.migrate()

    messages = database.index_definitions(MESSAGES)
    attempts = database.index_definitions(ATTEMPTS)
    for found in (messages, attempts):
        assert "(server_id)" not in found.values(), found
        assert not [n for n, d in found.items() if "_like" in n or "pattern_ops" in d], found
    named = {k: v for k, v in messages.items() if not k.startswith(f"{MESSAGES}_")}
    assert named == {
        "outbox_due_idx": "(status, next_attempt_at)",
        "outbox_server_due_idx": "(server_id, status, next_attempt_at)",
        "outbox_message_id_idx": "(message_id)",
        "outbox_idempotency_key_uniq": (
            "(idempotency_key) WHERE (idempotency_key IS NOT NULL)"
            if postgres
            else "(idempotency_key) WHERE idempotency_key IS NOT NULL"
        ),
    }
    others = {k: v for k, v in messages.items() if k not in named}
    assert sorted(others.values()) == (["(created_at)", "(id)"] if postgres else ["(created_at)"])
    assert sorted(attempts.values()) == (
        ["(id)", "(message_id)", "(server_id, started_at)"]
        if postgres
        else ["(message_id)", "(server_id, started_at)"]
    )

    keys = database.execute(f"SELECT idempotency_key FROM {MESSAGES} ORDER BY id")
    assert keys == [("apikey:1:order-1",), (None,), (None,)]
    duplicate = psycopg.errors.UniqueViolation if postgres else sqlite3.IntegrityError
    with pytest.raises(duplicate):
        database.execute(
            f"UPDATE {MESSAGES} SET idempotency_key = 'apikey:1:order-1' "
            "WHERE idempotency_key IS NULL"
        )
