"""IMAP IDLE for near-instant arrival: per server with **Instant Arrival (IDLE)** on, a thread of
the worker holds IDLE on its first folder and, when the server announces new mail, makes the server
due at once (`FetchState.next_fetch_at = now`). Fetching itself stays the claimed, batched path of
mailgate.inbox.fetcher; the watcher only wakes it.
"""

from __future__ import annotations

import logging
import threading

from django.db import close_old_connections, connections
from django.utils import timezone

from mailgate.connections import imap_transport
from mailgate.inbox.models import FetchState
from mailgate.servers.models import MailServer
from mailgate.transports.base import TransportError

log = logging.getLogger("mailgate.inbox")

# RFC 2177: re-issue IDLE well within the 30-minute inactivity timeout; shorter here, so a watcher
# notices a changed setting or a stopping worker within a few minutes.
IDLE_SECONDS = 120.0
RETRY_SECONDS = (5.0, 30.0, 120.0, 300.0)
MAX_SESSIONS = 1_000_000  # bounds the watcher's loop

_watchers: dict[int, IdleWatcher] = {}


def wants_idle(server: MailServer) -> bool:
    return server.active and server.incoming_protocol == "imap" and server.idle


def make_due(server_id: int) -> None:
    FetchState.objects.get_or_create(server_id=server_id)
    FetchState.objects.filter(pk=server_id).update(next_fetch_at=timezone.now())


class IdleWatcher(threading.Thread):
    """One IDLE connection to one server, until `stop` is set or the server no longer wants it."""

    def __init__(self, server_id: int, stop: threading.Event, idle_seconds: float = IDLE_SECONDS):
        super().__init__(name=f"mailgate-idle-{server_id}", daemon=True)
        self.server_id = server_id
        self.stop = stop
        self.idle_seconds = idle_seconds
        self.wakeups = 0

    def run(self) -> None:
        failures = 0
        try:
            for _ in range(MAX_SESSIONS):
                if self.stop.is_set():
                    return
                server = MailServer.objects.filter(pk=self.server_id).first()
                if server is None or not wants_idle(server):
                    return
                try:
                    self._session(server)
                    failures = 0
                except TransportError as exc:
                    failures += 1
                    pause = RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1]
                    log.info("IDLE on %s stopped (%s); again in %.0f s", server.name, exc, pause)
                    self.stop.wait(pause)
                finally:
                    close_old_connections()
        finally:
            connections.close_all()
            _watchers.pop(self.server_id, None)

    def _session(self, server: MailServer) -> None:
        with imap_transport(server, timeout=self.idle_seconds + 30) as transport:
            transport.open_folder(server.folder_list()[0], readonly=True)
            # One connection for at most ~25 minutes, then a fresh one (and fresh settings).
            for _ in range(max(int(1500 / self.idle_seconds), 1)):
                if self.stop.is_set():
                    return
                if transport.idle_wait(self.idle_seconds):
                    make_due(self.server_id)
                    self.wakeups += 1  # counted once the server is due, so a reader sees both
                    close_old_connections()


def idle_step() -> bool:
    """Worker step: keep one IDLE watcher running per server that wants IDLE (never does work
    itself, so it reports False)."""
    from mailgate.worker import current_stop_event

    stop = current_stop_event()
    for server in MailServer.objects.filter(active=True, incoming_protocol="imap", idle=True):
        watcher = _watchers.get(server.pk)
        if watcher is None or not watcher.is_alive():
            watcher = IdleWatcher(server.pk, stop)
            _watchers[server.pk] = watcher
            watcher.start()
    return False
