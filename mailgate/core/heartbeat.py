"""Worker heartbeats: each worker process records that it is alive, so health checks can tell.

Written by a thread of the running worker (`keep_beating`, so a long step does not silence it) and
by the worker step `heartbeat_step`, at most every BEAT_INTERVAL; read by the dashboard,
`mailgate doctor` and `/metrics`. Rows of workers gone for PRUNE_AFTER are deleted.

The holder string names the process's claims on outgoing mail too: a worker whose heartbeat is
older than `dead_after()` (MAILGATE_WORKER_DEAD_SECONDS, default 30 s) is dead, and any live worker
releases its claims at once instead of waiting out their lease.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from mailgate.conf import tuning_number
from mailgate.core.models import WorkerHeartbeat

log = logging.getLogger("mailgate.worker")

BEAT_INTERVAL = dt.timedelta(seconds=10)
# A worker not seen for this long is taken as stopped (a step may legitimately take a while:
# connection timeouts are 15 s each and one pass visits every server with due mail).
STALE_AFTER = dt.timedelta(minutes=5)
PRUNE_AFTER = dt.timedelta(days=1)
DEAD_AFTER_DEFAULT = 30.0
DEAD_AFTER_MINIMUM = 3.0


def dead_after() -> dt.timedelta:
    """How long a running worker may go unseen before it is taken as dead (its claims released)."""
    seconds = tuning_number(
        "MAILGATE_WORKER_DEAD_SECONDS",
        DEAD_AFTER_DEFAULT,
        DEAD_AFTER_MINIMUM,
        "seconds a worker may go unseen before its claims are released",
    )
    return dt.timedelta(seconds=seconds)


class Heartbeat:
    """The heartbeat of this process: `beat()` records it, at most every BEAT_INTERVAL."""

    def __init__(self, holder: str | None = None) -> None:
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        # The random part tells a restarted process from the one before with the same pid.
        self.holder = holder or f"{self.hostname}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.started_at: dt.datetime | None = None
        self.last_beat_at: dt.datetime | None = None
        self.beating = False  # a keep_beating() thread is running
        self._lock = threading.Lock()

    def interval(self, dead: dt.timedelta | None = None) -> dt.timedelta:
        """At most BEAT_INTERVAL, and small enough that three beats fit into dead_after()
        (`dead`, when the caller has just read it)."""
        return min(BEAT_INTERVAL, (dead if dead is not None else dead_after()) / 3)

    def is_due(self, now: dt.datetime) -> bool:
        last = self.last_beat_at
        # A clock set back makes `now - last` negative: beat then rather than wait it out.
        return last is None or not (dt.timedelta(0) <= now - last < self.interval())

    def is_current(self, now: dt.datetime | None = None) -> bool:
        """False when this process's beats stopped reaching the database for long enough that
        other workers may have taken it as dead and released its claims (only while a
        keep_beating() thread runs: without one a process does not claim to be beating)."""
        if not self.beating:
            return True
        last = self.last_beat_at
        if last is None:
            return False
        now = now or timezone.now()
        dead = dead_after()  # read once: this is asked before every message sent
        return now - last < dead - self.interval(dead)

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


def keep_beating(stop: threading.Event) -> threading.Thread:
    """Start a thread that beats for this process until `stop` is set (the running worker)."""
    heartbeat = process_heartbeat()

    def run() -> None:
        heartbeat.beating = True
        try:
            while not stop.is_set():
                try:
                    heartbeat.beat()
                except Exception:  # the database is away: beat again at the next interval
                    log.warning("worker heartbeat not recorded", exc_info=True)
                    connection.close()
                stop.wait(heartbeat.interval().total_seconds() / 2)
        finally:
            heartbeat.beating = False
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=run, name="mailgate-heartbeat", daemon=True)
    thread.start()
    return thread


def dead_workers(now: dt.datetime, within: dt.timedelta) -> list[str]:
    """Holders of workers unseen for dead_after(), seen within `within` (older claims expired)."""
    return list(
        WorkerHeartbeat.objects.filter(
            last_seen_at__lt=now - dead_after(), last_seen_at__gte=now - within
        ).values_list("holder", flat=True)
    )


def held_by(holders: list[str], field: str) -> Q:
    """Rows whose `field` names one of the worker processes `holders` or one of their connection
    threads ("<holder>/t<n>", see outbox.worker.Lane): a process's heartbeat covers its threads."""
    condition = Q(**{f"{field}__in": holders})
    for holder in holders:
        condition |= Q(**{f"{field}__startswith": f"{holder}/"})
    return condition


def live_holders(now: dt.datetime) -> list[str]:
    """Holders of the workers seen within dead_after() (not taken as dead)."""
    return list(
        WorkerHeartbeat.objects.filter(last_seen_at__gte=now - dead_after()).values_list(
            "holder", flat=True
        )
    )


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
