"""`ENGINE = "mailgate.dbsqlite"`: see the package's docstring."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from django.db.backends.sqlite3 import base

T = TypeVar("T")

LONG_WRITE = 0.2  # seconds a write transaction may hold the lock without owing a turn
POLITE_PAUSE = 0.15  # more than the longest pause between two tries for the lock
# Seconds between two tries for the write lock: the first, doubled at each try up to the last.
FIRST_TRY_PAUSE = 0.0001
LAST_TRY_PAUSE = 0.002
# sqlite3.connect()'s own default timeout, when OPTIONS gives none.
DEFAULT_TIMEOUT = 5.0


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or one of its extended codes: the database is locked by another connection."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


# A table locked by another connection of the same shared cache (Django's in-memory test
# databases use one): SQLite's busy handler never waits for it, and the statement did nothing.
SQLITE_LOCKED_SHAREDCACHE = 262


def _shared_cache_lock(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == SQLITE_LOCKED_SHAREDCACHE


def patiently(
    connection: sqlite3.Connection, timeout: float, run: Callable[..., T], *args: Any
) -> T:
    """run(*args), tried again while the database is locked, for up to `timeout` seconds: a
    statement of its own (or a BEGIN) that met the lock did nothing, so it can run again. Inside
    a transaction only a shared cache's table lock is waited for (the transaction's BEGIN
    IMMEDIATE already holds the database's write lock)."""
    deadline = None
    pause = FIRST_TRY_PAUSE
    while True:
        try:
            return run(*args)
        except sqlite3.OperationalError as exc:
            if not (_shared_cache_lock(exc) or (_busy(exc) and not connection.in_transaction)):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
            if now >= deadline:
                raise
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, LAST_TRY_PAUSE)


class Cursor(base.SQLiteCursorWrapper):
    """Statements outside a transaction wait for the write lock in patiently()'s short pauses;
    inside one (which holds the lock from its BEGIN IMMEDIATE) they wait only for a shared
    cache's table lock."""

    patience: float | None = None  # the timeout; None: SQLite's busy handler waits (see below)

    def execute(self, query: str, params: Any = None) -> Any:
        if self.patience is None:
            return super().execute(query, params)
        return patiently(self.connection, self.patience, super().execute, query, params)

    def execute_qmark(self, query: str, params: Sequence[Any]) -> Any:
        """execute() of a statement already written with SQLite's own "?" marks: the same waits,
        without Django's conversion of "%s" (a regular expression over the whole statement, which
        for a statement of many rows costs more than running it)."""
        run = super(base.SQLiteCursorWrapper, self).execute  # sqlite3.Cursor.execute
        if self.patience is None:
            return run(query, params)
        return patiently(self.connection, self.patience, run, query, params)

    def executemany(self, query: str, param_list: Iterable[Any]) -> Any:
        # The parameters may be an iterator, which a second try could not read again: SQLite's
        # own busy handler waits for this one, as before.
        if self.patience is None or self.connection.in_transaction:
            return super().executemany(query, param_list)
        connection = self.connection
        connection.execute(f"PRAGMA busy_timeout = {int(self.patience * 1000)}")
        try:
            return super().executemany(query, param_list)
        finally:
            connection.execute("PRAGMA busy_timeout = 0")


class DatabaseWrapper(base.DatabaseWrapper):
    _write_started: float | None = None
    _owes_turn_until = 0.0
    # The seconds a statement waits for the write lock (OPTIONS' timeout) when this backend waits
    # for it itself (transaction_mode IMMEDIATE); None: SQLite's busy handler does.
    _patience: float | None = None

    def get_new_connection(self, conn_params: dict[str, Any]) -> sqlite3.Connection:
        connection: sqlite3.Connection = super().get_new_connection(conn_params)
        self._patience = None
        # Only where every transaction takes the write lock at its BEGIN (IMMEDIATE): a statement
        # can then meet the lock only outside a transaction, where trying again is safe.
        if getattr(self, "transaction_mode", None) == "IMMEDIATE":
            self._patience = float(conn_params.get("timeout", DEFAULT_TIMEOUT))
            connection.execute("PRAGMA busy_timeout = 0")
        return connection

    def create_cursor(self, name: str | None = None) -> Cursor:
        cursor: Cursor = self.connection.cursor(factory=Cursor)
        cursor.patience = self._patience
        return cursor

    def _start_transaction_under_autocommit(self) -> None:
        wait = self._owes_turn_until - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        super()._start_transaction_under_autocommit()  # type: ignore[misc]
        self._write_started = time.monotonic()

    def _end_write(self) -> None:
        started, self._write_started = self._write_started, None
        if started is not None:
            now = time.monotonic()
            if now - started > LONG_WRITE:
                self._owes_turn_until = now + POLITE_PAUSE

    def _commit(self) -> None:
        try:
            super()._commit()  # type: ignore[misc]
        finally:
            self._end_write()

    def _rollback(self) -> None:
        try:
            super()._rollback()  # type: ignore[misc]
        finally:
            self._end_write()
