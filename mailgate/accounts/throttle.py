"""Throttling in the database, atomic across processes: failed sign-ins per (account, client
address) with growing delays, and request counts per fixed window (the REST API's rate limit)."""

from __future__ import annotations

import datetime as dt
import hashlib

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Case, F, Value, When
from django.utils import timezone

from mailgate.accounts.models import Counter

# A lock-out after `MAILGATE_LOGIN_MAX_FAILURES` failures lasts FIRST_DELAY, and doubles with each
# further failure up to MAX_DELAY; a success clears the pair's count.
FIRST_DELAY = dt.timedelta(minutes=1)
MAX_DELAY = dt.timedelta(hours=1)


def _name(kind: str, *parts: str) -> str:
    digest = hashlib.sha256("\0".join(p.lower() for p in parts).encode()).hexdigest()
    return f"{kind}:{digest}"


def hit(name: str, window_seconds: int) -> tuple[int, dt.datetime]:
    """Count one event in the current fixed window; return the count and when the window ends.

    One statement creates the row or raises its count (restarting it in a new window) and returns
    the new count, so concurrent processes never lose an increment: an upsert with RETURNING on
    PostgreSQL and SQLite (3.35+), an UPDATE then a read elsewhere.
    """
    now = timezone.now()
    epoch = int(now.timestamp())
    start = dt.datetime.fromtimestamp(epoch - epoch % window_seconds, tz=dt.UTC)
    end = start + dt.timedelta(seconds=window_seconds)
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor in ("postgresql", "sqlite") and db.features.can_return_columns_from_insert:
        with db.cursor() as cursor:
            cursor.execute(_upsert_sql(db), [name, db.ops.adapt_datetimefield_value(start)])
            row = cursor.fetchone()
        return int(row[0]), end
    for _ in range(2):
        updated = Counter.objects.filter(name=name).update(
            count=Case(When(window_start=start, then=F("count") + 1), default=Value(1)),
            window_start=start,
        )
        if updated:
            break
        try:
            with transaction.atomic():
                Counter.objects.create(name=name, window_start=start, count=1)
            break
        except IntegrityError:  # another process created it first: count on that row
            continue
    count = Counter.objects.filter(name=name).values_list("count", flat=True).first() or 1
    return count, end


def _upsert_sql(db: BaseDatabaseWrapper) -> str:
    """INSERT ... ON CONFLICT (name) DO UPDATE ... RETURNING count, for hit()."""
    quote = db.ops.quote_name
    table = quote(Counter._meta.db_table)
    name, start, count = quote("name"), quote("window_start"), quote("count")
    return (
        f"INSERT INTO {table} ({name}, {start}, {count}) VALUES (%s, %s, 1) "  # noqa: S608
        f"ON CONFLICT ({name}) DO UPDATE SET {count} = CASE WHEN {table}.{start} = "
        f"excluded.{start} THEN {table}.{count} + 1 ELSE 1 END, {start} = excluded.{start} "
        f"RETURNING {count}"
    )


def _signin(username: str, address: str) -> str:
    return _name("signin", username, address)


def locked_until(username: str, address: str) -> dt.datetime | None:
    """When this account may be tried again from this address, or None when it may be now."""
    until = (
        Counter.objects.filter(name=_signin(username, address))
        .values_list("blocked_until", flat=True)
        .first()
    )
    return until if until is not None and until > timezone.now() else None


def is_locked(username: str, address: str) -> bool:
    return locked_until(username, address) is not None


def record_failure(username: str, address: str) -> None:
    """Count a failed sign-in of the pair; past the limit, block it for a growing delay."""
    name = _signin(username, address)
    count, _ = hit(name, settings.MAILGATE_LOGIN_WINDOW_SECONDS)
    over = count - settings.MAILGATE_LOGIN_MAX_FAILURES
    if over >= 0:
        delay = min(FIRST_DELAY * 2 ** min(over, 16), MAX_DELAY)
        Counter.objects.filter(name=name).update(blocked_until=timezone.now() + delay)


def reset(username: str, address: str) -> None:
    Counter.objects.filter(name=_signin(username, address)).delete()
