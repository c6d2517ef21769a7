"""mailgate.dbsqlite: a statement outside a transaction waits for SQLite's write lock in short
pauses (SQLite's busy handler sleeps 1, 2, 5, 10 ... ms), up to the connection's timeout."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.dbsqlite import base

pytestmark = pytest.mark.nodb


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection]]:
    """Two connections to one WAL database: the one under test (no busy handler, as the backend
    leaves it) and another that takes the write lock."""
    path = str(tmp_path / "db.sqlite3")
    ours = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    ours.execute("PRAGMA journal_mode=WAL")
    ours.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    ours.execute("PRAGMA busy_timeout = 0")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    yield ours, other
    ours.close()
    other.close()


def cursor(connection: sqlite3.Connection, patience: float) -> base.Cursor:
    made = connection.cursor(factory=base.Cursor)
    made.patience = patience
    return made


def hold_lock(other: sqlite3.Connection, seconds: float) -> threading.Thread:
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(seconds, lambda: other.execute("COMMIT"))
    release.start()
    return release


@pytest.mark.parametrize(
    ("method", "sql", "stored"),
    [
        ("execute", "INSERT INTO t (v) VALUES (%s)", [("x",)]),
        # Written with SQLite's own marks: run as it is (a literal "%s" stays), with the same wait.
        ("execute_qmark", "INSERT INTO t (v) VALUES (?), ('%s')", [("x",), ("%s",)]),
    ],
)
def test_a_statement_waits_for_the_lock_and_runs(
    database: tuple[sqlite3.Connection, ...], method: str, sql: str, stored: list[tuple[str]]
) -> None:
    ours, other = database
    release = hold_lock(other, 0.05)
    started = time.monotonic()
    getattr(cursor(ours, 5.0), method)(sql, ["x"])
    waited = time.monotonic() - started
    release.join()
    assert 0.04 <= waited < 1.0
    assert ours.execute("SELECT v FROM t ORDER BY id").fetchall() == stored


def test_begin_immediate_waits_for_the_lock(database: tuple[sqlite3.Connection, ...]) -> None:
    ours, other = database
    release = hold_lock(other, 0.05)
    cursor(ours, 5.0).execute("BEGIN IMMEDIATE")
    assert ours.in_transaction
    ours.execute("COMMIT")
    release.join()


def test_past_the_timeout_the_lock_error_is_raised(
    database: tuple[sqlite3.Connection, ...],
) -> None:
    ours, other = database
    release = hold_lock(other, 3.0)  # far longer than the timeout, even on a loaded machine
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        cursor(ours, 0.1).execute("INSERT INTO t (v) VALUES (%s)", ["x"])
    assert 0.09 <= time.monotonic() - started < 2.5
    release.join()
    assert ours.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)


def test_inside_a_transaction_a_statement_is_not_tried_again(
    database: tuple[sqlite3.Connection, ...],
) -> None:
    """Trying again is safe only for a statement that is its own transaction (SQLite: "if the
    statement is not a COMMIT and occurs within an explicit transaction then you should rollback")."""
    ours, other = database
    ours.execute("BEGIN")  # deferred: takes the write lock at its first write
    ours.execute("SELECT COUNT(*) FROM t").fetchone()
    release = hold_lock(other, 2.0)  # a retry would wait for this release
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        cursor(ours, 5.0).execute("INSERT INTO t (v) VALUES (%s)", ["x"])
    assert time.monotonic() - started < 1.5
    ours.execute("ROLLBACK")
    release.join()


@pytest.mark.parametrize("in_transaction", [False, True])
def test_a_shared_cache_table_lock_is_waited_for(in_transaction: bool) -> None:
    """Django's in-memory test databases share one cache, where a reader locks the table for a
    writer (SQLITE_LOCKED_SHAREDCACHE) and no busy handler waits: a statement, in a transaction
    or not, is tried again (sqlite3_unlock_notify's documented retry)."""
    uri = f"file:locked{int(in_transaction)}?mode=memory&cache=shared"
    ours = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    other = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        ours.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        ours.execute("INSERT INTO t (v) VALUES ('a'), ('b')")
        reading = other.execute("SELECT v FROM t")
        reading.fetchone()  # an unfinished read holds the table's read lock
        with pytest.raises(sqlite3.OperationalError) as plain:
            ours.execute("INSERT INTO t (v) VALUES ('x')")
        assert plain.value.sqlite_errorcode == base.SQLITE_LOCKED_SHAREDCACHE
        release = threading.Timer(0.05, reading.close)
        release.start()
        if in_transaction:
            ours.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        cursor(ours, 5.0).execute("INSERT INTO t (v) VALUES (%s)", ["x"])
        waited = time.monotonic() - started
        if in_transaction:
            ours.execute("COMMIT")
        release.join()
        assert 0.04 <= waited < 1.0
        assert ours.execute("SELECT v FROM t ORDER BY id").fetchall() == [("a",), ("b",), ("x",)]
    finally:
        ours.close()
        other.close()


def test_executemany_waits_with_sqlites_busy_handler(
    database: tuple[sqlite3.Connection, ...],
) -> None:
    """Its parameters may be an iterator, which a second try could not read again."""
    ours, other = database
    release = hold_lock(other, 0.05)
    cursor(ours, 5.0).executemany("INSERT INTO t (v) VALUES (%s)", iter([["a"], ["b"]]))
    release.join()
    assert ours.execute("SELECT COUNT(*) FROM t").fetchone() == (2,)
    assert ours.execute("PRAGMA busy_timeout").fetchone() == (0,)


def test_other_errors_are_raised_at_once(database: tuple[sqlite3.Connection, ...]) -> None:
    ours, _ = database
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        cursor(ours, 5.0).execute("INSERT INTO missing (v) VALUES (%s)", ["x"])


@pytest.mark.parametrize(("mode", "busy_timeout"), [("IMMEDIATE", 0), (None, 7000)])
def test_the_backend_waits_itself_only_with_immediate_transactions(
    tmp_path: Path, mode: str | None, busy_timeout: int
) -> None:
    """Only where every transaction takes the lock at its BEGIN can a statement meet the lock
    outside a transaction alone; otherwise SQLite's busy handler waits, as in Django's backend."""
    from django.db import connections

    settings = {
        **connections.settings["default"],
        "NAME": str(tmp_path / "db.sqlite3"),
        "OPTIONS": {"timeout": 7, **({"transaction_mode": mode} if mode else {})},
    }
    wrapper = base.DatabaseWrapper(settings, alias="dbsqlite-test")
    # The connection as ensure_connection() opens it (pytest-django guards that door).
    raw = wrapper.get_new_connection(wrapper.get_connection_params())
    try:
        assert raw.execute("PRAGMA busy_timeout").fetchone() == (busy_timeout,)
        assert wrapper._patience == (7.0 if mode else None)
    finally:
        raw.close()
