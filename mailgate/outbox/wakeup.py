"""Waking an idle worker as soon as mail is queued, instead of at its next idle poll.

PostgreSQL: enqueue() sends NOTIFY on CHANNEL once the caller's transaction commits, and an idle
worker waits with LISTEN. SQLite has no notifications: the idle worker checks the highest
message id every POLL_SECONDS, an index lookup of a few microseconds. Either way the wait still ends
after its timeout, so anything missed (a dropped connection, a release, a retry) is found by the
worker's next ordinary cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.db import connection, transaction

log = logging.getLogger("mailgate.outbox")

# Reference: https://www.postgresql.org/docs/current/sql-notify.html
CHANNEL = "mailgate_outbox"
POLL_SECONDS = 0.025
# Longest uninterrupted wait on PostgreSQL, so that a stop request is seen within it.
SLICE_SECONDS = 0.25

_listening: Any = None  # the psycopg connection that runs LISTEN, to LISTEN again on a new one


def _notify() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"NOTIFY {CHANNEL}")


def announce() -> None:
    """Tell idle workers that mail was queued, once the caller's transaction commits (PostgreSQL)."""
    if connection.vendor != "postgresql":
        return
    if not connection.in_atomic_block:
        _notify()
        return
    # Once per transaction: a callback still pending means this transaction has announced already.
    if any(entry[1] is _notify for entry in connection.run_on_commit):
        return
    # robust: a failed NOTIFY after the commit is logged, not raised to a caller whose mail is queued.
    transaction.on_commit(_notify, robust=True)


def wait_for_mail(stop: threading.Event, seconds: float) -> None:
    """Return after `seconds`, once `stop` is set, or as soon as new mail has been queued."""
    deadline = time.monotonic() + seconds
    try:
        if connection.vendor == "postgresql":
            _wait_for_notify(stop, deadline)
            return
        if connection.vendor == "sqlite":
            _poll_for_new_rows(stop, deadline)
            return
    except Exception as exc:
        # Whatever the database does, the worker keeps its rhythm; its next cycle reports the error.
        log.debug("waiting for mail without the database: %s", exc)
    stop.wait(max(deadline - time.monotonic(), 0))


def _wait_for_notify(stop: threading.Event, deadline: float) -> None:
    global _listening
    connection.ensure_connection()
    pg = connection.connection
    if pg is not _listening:
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        _listening = pg
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        # psycopg keeps notifications that arrived during other queries for notifies().
        # (One generator at a time: each holds the connection's lock while it runs.)
        received = False
        for _ in pg.notifies(timeout=min(left, SLICE_SECONDS), stop_after=1):
            received = True
        if received:
            # The next cycle sees all mail committed so far: the other notifications are spent too.
            for _ in pg.notifies(timeout=0):
                pass
            return


def _poll_for_new_rows(stop: threading.Event, deadline: float) -> None:
    from mailgate.outbox.models import OutgoingMessage

    sql = f"SELECT MAX(id) FROM {connection.ops.quote_name(OutgoingMessage._meta.db_table)}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql)
        (newest,) = cursor.fetchone()
        while not stop.wait(min(POLL_SECONDS, max(deadline - time.monotonic(), 0))):
            if time.monotonic() >= deadline:
                return
            cursor.execute(sql)
            (latest,) = cursor.fetchone()
            if latest is not None and (newest is None or latest > newest):
                return
