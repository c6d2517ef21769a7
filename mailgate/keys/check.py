"""Checking a presented key: known, not revoked, a scope that allows the action, within its rate."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from mailgate.accounts import throttle
from mailgate.keys.models import APIKey, hash_key

# last_used_at is written at most this often per key, so a busy client does not write on every call.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class APIKeyError(Exception):
    """A request's API key is missing, malformed, unknown, revoked, lacks the scope (403) or has
    made too many requests (429, retry_after seconds); the message says which."""

    def __init__(self, code: str, message: str, status: int = 401, retry_after: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.retry_after = retry_after


def _by_hash(key_hash: str) -> APIKey | None:
    """The key row with this hash: one lookup on the unique key_hash index, on every request.

    Nothing is cached, so a revoked key stops working with the next request in every process. The
    SQL and the columns' converters are worked out once per database connection instead of by the
    ORM for each call (most of the lookup's CPU); the values pass through the same converters
    as the ORM's would.
    """
    db = connections[DEFAULT_DB_ALIAS]  # the thread's wrapper: not looked up again per column
    plan = getattr(db, "_mailgate_key_lookup", None)
    if plan is None:
        plan = _lookup_plan(db)
        setattr(db, "_mailgate_key_lookup", plan)  # noqa: B010 (kept with the connection)
    sql, converters = plan
    with db.cursor() as cursor:
        cursor.execute(sql, [key_hash])
        row = cursor.fetchone()
    if row is None:
        return None
    values = []
    for (column, convert), value in zip(converters, row, strict=True):
        for function in convert:
            value = function(value, column, db)
        values.append(value)
    return APIKey.from_db(db.alias, _ATTNAMES, values)


_ATTNAMES = [field.attname for field in APIKey._meta.concrete_fields]


def _lookup_plan(db: BaseDatabaseWrapper) -> tuple[str, list[tuple[Any, list[Any]]]]:
    """The SELECT by key_hash and, per column, its expression and converters, for the thread's
    connection `db` (kept on it by _by_hash)."""
    fields = APIKey._meta.concrete_fields
    table = APIKey._meta.db_table
    quote = db.ops.quote_name
    columns = ", ".join(f"{quote(table)}.{quote(str(field.column))}" for field in fields)
    sql = f"SELECT {columns} FROM {quote(table)} WHERE {quote('key_hash')} = %s"  # noqa: S608
    converters = []
    for field in fields:
        column = field.get_col(table)
        convert = db.ops.get_db_converters(column) + field.get_db_converters(db)
        converters.append((column, convert))
    return sql, converters


def find_key(token: str, actions: set[str] | None = None) -> APIKey:
    """The active key for a presented token whose scope allows one of `actions` (any when None)."""
    key = _by_hash(hash_key(token))
    if key is None:
        raise APIKeyError("invalid_api_key", "The API key is not valid.")
    if key.revoked_at is not None:
        raise APIKeyError(
            "revoked_api_key",
            f"The API key {key.prefix}… was revoked on {key.revoked_at:%Y-%m-%d}: create a new one.",
        )
    if actions is not None and not any(key.allows(a) for a in actions):
        needed = "read" if "read_all" in actions else "send"
        raise APIKeyError(
            "insufficient_scope",
            f"The API key {key.prefix}… has scope {key.scope!r}, which does not allow this: "
            f"it needs scope {needed} or admin (`mailgate api-keys create --name N "
            f"--scope {needed}`).",
            status=403,
        )
    return key


def is_active(key_id: int) -> bool:
    """Whether the key with this id exists and is not revoked, asked of the database each time
    (a key revoked a moment ago is refused by every process). The SELECT is written once per
    connection: the ORM's filter().exists() cost the relay a third of a millisecond a message."""
    db = connections[DEFAULT_DB_ALIAS]
    sql = getattr(db, "_mailgate_key_active", None)
    if sql is None:
        quote = db.ops.quote_name
        table, pk = quote(APIKey._meta.db_table), quote(str(APIKey._meta.pk.column))
        sql = f"SELECT 1 FROM {table} WHERE {pk} = %s AND {quote('revoked_at')} IS NULL"  # noqa: S608
        setattr(db, "_mailgate_key_active", sql)  # noqa: B010 (kept with the connection)
    with db.cursor() as cursor:
        cursor.execute(sql, [key_id])
        return cursor.fetchone() is not None


def note_use(key: APIKey) -> None:
    """Record that the key was used now (at most once per LAST_USED_RESOLUTION)."""
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


def count_request(key: APIKey) -> None:
    """Count the request against the key's rate (atomic across processes); 429 past the limit."""
    limit = settings.MAILGATE_API_RATE_LIMIT
    if not limit:
        return
    count, window_end = throttle.hit(f"apikey:{key.pk}", 60)
    if count > limit:
        wait = max(1, math.ceil((window_end - timezone.now()).total_seconds()))
        raise APIKeyError(
            "rate_limited",
            f"The API key {key.prefix}… made more than {limit} requests this minute "
            f"(MAILGATE_API_RATE_LIMIT): retry after {wait} seconds.",
            status=429,
            retry_after=wait,
        )
