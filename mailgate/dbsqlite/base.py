"""`ENGINE = "mailgate.dbsqlite"`: see the package's docstring."""

from __future__ import annotations

import time

from django.db.backends.sqlite3 import base

LONG_WRITE = 0.2  # seconds a write transaction may hold the lock without owing a turn
POLITE_PAUSE = 0.15  # more than the busy handler's longest sleep (100 ms)


class DatabaseWrapper(base.DatabaseWrapper):
    _write_started: float | None = None
    _owes_turn_until = 0.0

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
