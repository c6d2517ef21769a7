"""Retention: the content of finished messages is deleted after MAILGATE_RETENTION_DAYS.

The bodies and attachments (the `raw` bytes) of sent, failed and cancelled messages older than the
retention are emptied; the row (addresses, subject, Message-ID, status, replies) and its delivery
attempts stay, so the history and the statistics remain. The worker step runs at most once per
PURGE_EVERY per process; `mailgate purge --older-than DAYS` does it once. Each batch is its own
short transaction, so a purge never holds SQLite's write lock for long.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from mailgate.outbox import conf
from mailgate.outbox.models import FINAL, OutgoingMessage

log = logging.getLogger("mailgate.outbox")

BATCH = 500
PURGE_EVERY = 3600.0  # seconds
_last_run = 0.0


def purge_bodies(older_than: timedelta, *, now: datetime | None = None) -> int:
    """Empty the content of finished messages last changed before `now - older_than`; how many."""
    cutoff = (now or timezone.now()) - older_than
    due = OutgoingMessage.objects.filter(
        status__in=FINAL, updated_at__lt=cutoff, purged_at__isnull=True
    )
    purged = 0
    while True:  # bounded: each batch leaves fewer rows to purge
        ids = list(due.order_by("id").values_list("id", flat=True)[:BATCH])
        if not ids:
            break
        with transaction.atomic():
            # updated_at is left alone: it still says when the message was finished.
            purged += OutgoingMessage.objects.filter(pk__in=ids, purged_at__isnull=True).update(
                raw=b"", purged_at=timezone.now()
            )
    if purged:
        log.info("purged the content of %d finished messages older than %s", purged, older_than)
    return purged


def purge_step() -> bool:
    """Worker step (WORKER_STEPS): apply MAILGATE_RETENTION_DAYS now and then; True if it purged."""
    global _last_run
    days = conf.get().retention_days
    if not days or (_last_run and time.monotonic() - _last_run < PURGE_EVERY):
        return False
    _last_run = time.monotonic()
    return purge_bodies(timedelta(days=days)) > 0
