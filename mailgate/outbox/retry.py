"""The retry policy: exponential back-off with jitter, bounded by the message's maximum age."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta

from mailgate.outbox import conf


def backoff_delay(
    retries: int,
    *,
    base: float | None = None,
    cap: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds before retry number `retries` (1-based): base * 2^(n-1), capped, times 0.8-1.2."""
    if base is None or cap is None:
        config = conf.get()
        base = config.backoff_base if base is None else base
        cap = config.backoff_max if cap is None else cap
    delay = min(base * 2 ** max(retries - 1, 0), cap)
    # Jitter spreads the retries of a burst that failed together (e.g. a server outage).
    return delay * (0.8 + 0.4 * rand())


def deadline(created_at: datetime) -> datetime:
    """When a message that still is not delivered is given up."""
    return created_at + timedelta(seconds=conf.get().max_age)


def next_attempt(
    created_at: datetime, now: datetime, retries: int, rand: Callable[[], float] = random.random
) -> datetime | None:
    """When to try again after a deferral, or None when the maximum age is reached."""
    limit = deadline(created_at)
    if now >= limit:
        return None
    return min(now + timedelta(seconds=backoff_delay(retries, rand=rand)), limit)
