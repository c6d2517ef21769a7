"""Login throttling: too many failed sign-ins for a username or from an address lock it out for a while."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache


def _key(kind: str, value: str) -> str:
    return "login-fail:" + kind + ":" + hashlib.sha256(value.lower().encode()).hexdigest()


def is_locked(username: str, address: str) -> bool:
    limit = settings.MAILGATE_LOGIN_MAX_FAILURES
    return any(
        cache.get(_key(k, v), 0) >= limit for k, v in (("user", username), ("addr", address))
    )


def record_failure(username: str, address: str) -> None:
    window = settings.MAILGATE_LOGIN_WINDOW_SECONDS
    for kind, value in (("user", username), ("addr", address)):
        key = _key(kind, value)
        if cache.add(key, 1, window):
            continue
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, window)


def reset(username: str, address: str) -> None:
    cache.delete_many([_key("user", username), _key("addr", address)])
