"""Worker heartbeats: each worker process records that it is alive, so health checks can tell.

Written by the worker step `heartbeat_step` at most every BEAT_INTERVAL; read by the dashboard,
`mailgate doctor` and `/metrics`. Rows of workers gone for PRUNE_AFTER are deleted.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading

from django.utils import timezone

from mailgate.core.models import WorkerHeartbeat

BEAT_INTERVAL = dt.timedelta(seconds=10)
# A worker not seen for this long is taken as stopped (a step may legitimately take a while:
# connection timeouts are 15 s each and one pass visits every server with due mail).
STALE_AFTER = dt.timedelta(minutes=5)
PRUNE_AFTER = dt.timedelta(days=1)


class Heartbeat:
    """The heartbeat of this process: `beat()` records it, at most every BEAT_INTERVAL."""

    def __init__(self, holder: str | None = None) -> None:
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.holder = holder or f"{self.hostname}:{self.pid}"
        self.started_at: dt.datetime | None = None
        self.last_beat_at: dt.datetime | None = None
        self._lock = threading.Lock()

    def is_due(self, now: dt.datetime) -> bool:
        last = self.last_beat_at
        # A clock set back makes `now - last` negative: beat then rather than wait it out.
        return last is None or not (dt.timedelta(0) <= now - last < BEAT_INTERVAL)

    def beat(self, now: dt.datetime | None = None) -> bool:
        """Record this process as alive (and prune long-gone workers) when due; True if written."""
        now = now or timezone.now()
        with self._lock:
            if not self.is_due(now):
                return False
            if self.started_at is None:
                self.started_at = now
            WorkerHeartbeat.objects.update_or_create(
                holder=self.holder,
                defaults={
                    "hostname": self.hostname[:255],
                    "pid": self.pid,
                    "started_at": self.started_at,
                    "last_seen_at": now,
                },
            )
            WorkerHeartbeat.objects.filter(last_seen_at__lt=now - PRUNE_AFTER).delete()
            self.last_beat_at = now
            return True


_heartbeat: Heartbeat | None = None
_heartbeat_lock = threading.Lock()


def process_heartbeat() -> Heartbeat:
    """This process's Heartbeat (a new one after a fork, since the pid names the holder)."""
    global _heartbeat
    with _heartbeat_lock:
        if _heartbeat is None or _heartbeat.pid != os.getpid():
            _heartbeat = Heartbeat()
        return _heartbeat


def heartbeat_step() -> bool:
    """Worker step (WORKER_STEPS): record the heartbeat; always False, it is not work done."""
    process_heartbeat().beat()
    return False


def latest_heartbeat() -> WorkerHeartbeat | None:
    """The most recently seen worker, or None when no worker ran within PRUNE_AFTER."""
    return WorkerHeartbeat.objects.order_by("-last_seen_at").first()


def live_workers(now: dt.datetime | None = None) -> list[WorkerHeartbeat]:
    """Workers seen within STALE_AFTER, most recent first."""
    now = now or timezone.now()
    return list(WorkerHeartbeat.objects.filter(last_seen_at__gte=now - STALE_AFTER))
