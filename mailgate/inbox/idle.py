"""IMAP IDLE for near-instant arrival: per server with **Instant Arrival (IDLE)** on, one thread of
one worker holds IDLE on its first folder and, when the server announces new mail, makes the server
due at once (`FetchState.next_fetch_at = now`). Fetching itself stays the claimed, batched path of
mailgate.inbox.fetcher; the watcher only wakes it.

However many workers run, a server has one IDLE connection: a worker starts a watcher only after
taking the server's IDLE lease (`FetchState.idle_by` / `idle_until`, a compare-and-swap like the
fetch claim), named after its heartbeat. The watcher renews the lease after every IDLE round and
gives it back when it ends; the lease of a worker that died is taken over when it runs out, at
once when the worker's heartbeat says it is dead (or its process is gone from this host).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from django.db import DatabaseError, close_old_connections, connections
from django.db.models import Q
from django.utils import timezone

from mailgate.connections import imap_transport
from mailgate.core.heartbeat import dead_workers, process_heartbeat
from mailgate.inbox.fetcher import holder_gone_here
from mailgate.inbox.models import FetchState
from mailgate.servers.models import MailServer
from mailgate.transports.base import TransportError

log = logging.getLogger("mailgate.inbox")

# RFC 2177: re-issue IDLE well within the 30-minute inactivity timeout; shorter here, so a watcher
# notices a changed setting or a stopping worker within a few minutes.
IDLE_SECONDS = 120.0
RETRY_SECONDS = (5.0, 30.0, 120.0, 300.0)
CLAIM_ATTEMPTS = 5  # tries at the IDLE lease while the database is busy
MAX_SESSIONS = 1_000_000  # bounds the watcher's loop
CONNECT_SECONDS = 30.0  # the transport's timeout beyond the IDLE round


def lease_for(idle_seconds: float) -> timedelta:
    """How long a lease lasts without renewal: an IDLE round, a reconnection and a margin."""
    return timedelta(seconds=2 * idle_seconds + 2 * CONNECT_SECONDS)


_watchers: dict[int, IdleWatcher] = {}


def wants_idle(server: MailServer) -> bool:
    return server.active and server.incoming_protocol == "imap" and server.idle


def make_due(server_id: int) -> None:
    FetchState.objects.get_or_create(server_id=server_id)
    FetchState.objects.filter(pk=server_id).update(next_fetch_at=timezone.now())


# -- the lease: one IDLE connection per server across workers ----------------------------------


def claim_idle(server_id: int, holder: str, lease: timedelta) -> bool:
    """Take (or keep) the server's IDLE lease for `holder`; False when another live worker has it."""
    FetchState.objects.get_or_create(server_id=server_id)
    now = timezone.now()
    rows = FetchState.objects.filter(pk=server_id)
    free = Q(idle_by="") | Q(idle_by=holder) | Q(idle_until__isnull=True) | Q(idle_until__lt=now)
    if rows.filter(free).update(idle_by=holder, idle_until=now + lease):
        return True
    current = rows.values_list("idle_by", flat=True).first() or ""
    gone = holder_gone_here(current) or current in dead_workers(now, lease)
    if current and gone:
        log.info("taking over the IDLE lease of server #%s from %s (gone)", server_id, current)
        return bool(rows.filter(idle_by=current).update(idle_by=holder, idle_until=now + lease))
    return False


def renew_idle(server_id: int, holder: str, lease: timedelta) -> bool:
    """Extend the lease; False when it was taken over (the caller must stop idling)."""
    return bool(
        FetchState.objects.filter(pk=server_id, idle_by=holder).update(
            idle_until=timezone.now() + lease
        )
    )


def release_idle(server_id: int, holder: str) -> None:
    FetchState.objects.filter(pk=server_id, idle_by=holder).update(idle_by="", idle_until=None)


def idle_holder(server_id: int) -> str:
    """Who holds the server's IDLE connection now ('' when nobody)."""
    state = FetchState.objects.filter(pk=server_id).values_list("idle_by", "idle_until").first()
    if state is None or not state[0] or state[1] is None or state[1] < timezone.now():
        return ""
    return str(state[0])


class IdleWatcher(threading.Thread):
    """One IDLE connection to one server, while this worker holds the server's IDLE lease and
    until `stop` is set or the server no longer wants it."""

    def __init__(
        self,
        server_id: int,
        stop: threading.Event,
        idle_seconds: float = IDLE_SECONDS,
        *,
        holder: str | None = None,
    ):
        super().__init__(name=f"mailgate-idle-{server_id}", daemon=True)
        self.server_id = server_id
        self.stop = stop
        self.idle_seconds = idle_seconds
        self.holder = holder or process_heartbeat().holder
        self.lease = lease_for(idle_seconds)
        self.wakeups = 0
        self.lost_lease = False

    def run(self) -> None:
        try:
            if not self._claim():
                self.lost_lease = True  # another worker idles on this server (or none could)
                return
            self._watch()
        finally:
            if not self.lost_lease:
                try:
                    release_idle(self.server_id, self.holder)
                except DatabaseError as exc:  # the lease then runs out by itself
                    log.warning("IDLE on server #%s: lease not released (%s)", self.server_id, exc)
            connections.close_all()
            _forget(self)

    def _claim(self) -> bool:
        """Take the server's IDLE lease; a database that is busy for a moment is asked again
        (a few times, briefly) rather than ending the watcher."""
        for attempt in range(1, CLAIM_ATTEMPTS + 1):
            try:
                return claim_idle(self.server_id, self.holder, self.lease)
            except DatabaseError as exc:
                log.warning(
                    "IDLE on server #%s: the lease could not be taken (%s); attempt %d of %d",
                    self.server_id,
                    exc,
                    attempt,
                    CLAIM_ATTEMPTS,
                )
                close_old_connections()
                if self.stop.wait(0.2 * attempt):
                    return False
        return False

    def _watch(self) -> None:
        failures = 0
        for _ in range(MAX_SESSIONS):
            try:
                if self.stop.is_set() or not self._keep_lease():
                    return
                server = MailServer.objects.filter(pk=self.server_id).first()
                if server is None or not wants_idle(server):
                    return
                self._session(server)
                failures = 0
            except (TransportError, DatabaseError) as exc:
                # A dropped connection, or the database busy or away for a moment: again later.
                failures += 1
                pause = RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1]
                log.info(
                    "IDLE on server #%s stopped (%s); again in %.0f s", self.server_id, exc, pause
                )
                self.stop.wait(pause)
            finally:
                close_old_connections()

    def _keep_lease(self) -> bool:
        if renew_idle(self.server_id, self.holder, self.lease):
            return True
        self.lost_lease = True
        log.info("IDLE on server #%s: another worker took it over", self.server_id)
        return False

    def _session(self, server: MailServer) -> None:
        with imap_transport(server, timeout=self.idle_seconds + CONNECT_SECONDS) as transport:
            transport.open_folder(server.folder_list()[0], readonly=True)
            # One connection for at most ~25 minutes, then a fresh one (and fresh settings).
            for _ in range(max(int(1500 / self.idle_seconds), 1)):
                if self.stop.is_set() or not self._keep_lease():
                    return
                if transport.idle_wait(self.idle_seconds):
                    make_due(self.server_id)
                    self.wakeups += 1  # counted once the server is due, so a reader sees both
                    close_old_connections()


def _forget(watcher: IdleWatcher) -> None:
    if _watchers.get(watcher.server_id) is watcher:
        _watchers.pop(watcher.server_id, None)


def keep_watchers(
    stop: threading.Event,
    *,
    holder: str | None = None,
    watchers: dict[int, IdleWatcher] | None = None,
    idle_seconds: float = IDLE_SECONDS,
) -> list[IdleWatcher]:
    """Start a watcher for each server that wants IDLE, has none running in this process, and
    whose IDLE lease this worker can take; return the watchers started."""
    holder = holder or process_heartbeat().holder
    running = _watchers if watchers is None else watchers
    started = []
    for server in MailServer.objects.filter(active=True, incoming_protocol="imap", idle=True):
        watcher = running.get(server.pk)
        if watcher is not None and watcher.is_alive():
            continue
        if not claim_idle(server.pk, holder, lease_for(idle_seconds)):
            continue  # another worker holds this server's IDLE connection
        watcher = IdleWatcher(server.pk, stop, idle_seconds, holder=holder)
        running[server.pk] = watcher
        watcher.start()
        started.append(watcher)
    return started


def idle_step() -> bool:
    """Worker step: keep one IDLE watcher running per server that wants IDLE, across all
    workers (never does work itself, so it reports False)."""
    from mailgate.worker import current_stop_event

    keep_watchers(current_stop_event())
    return False
