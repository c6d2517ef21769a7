"""A worker's open SMTP connections, one per server, each holding a lease on a connection slot.

The leases (ConnectionLease rows) count a server's concurrent connections across all workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.utils import timezone

from mailgate.connections import smtp_transport
from mailgate.core.heartbeat import held_by, live_holders
from mailgate.outbox import conf
from mailgate.outbox.models import ConnectionLease, OutgoingMessage, Status
from mailgate.servers.models import MailServer
from mailgate.transports.smtp import SMTPTransport


def new_transport(server: MailServer) -> SMTPTransport:
    """An SMTP transport for the server with the outbox's settings (not yet open)."""
    config = conf.get()
    return smtp_transport(
        server,
        timeout=config.smtp_timeout,
        pipelining=config.smtp_pipelining,
        chunking=config.smtp_chunking,
    )


@dataclass
class Connection:
    transport: SMTPTransport
    lease_id: int
    renewed: float = field(default_factory=time.monotonic)


class ConnectionPool:
    """The connections of one worker (`holder`); `token_requests` counts those of closed ones."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.connections: dict[int, Connection] = {}
        self.token_requests = 0

    def transport_for(self, server: MailServer) -> SMTPTransport:
        """The server's transport; a closed one is replaced with the server's current settings."""
        held = self.connections[server.pk]
        if not held.transport.is_open:
            held.transport = new_transport(server)
        return held.transport

    def lease(self, server: MailServer, now: datetime, until: datetime) -> bool:
        """Hold (or renew) this worker's connection slot for the server; False when all are taken."""
        open_connection = self.connections.get(server.pk)
        if open_connection is not None:
            renewed = ConnectionLease.objects.filter(pk=open_connection.lease_id).update(
                expires_at=until
            )
            if renewed:
                open_connection.renewed = time.monotonic()
                return True
            self.drop(server.pk)
        # An expired lease is taken back only from a worker taken as dead: a live one may keep a
        # connection open between passes (or be slowed down) past its lease, and that connection
        # still counts against the server's limit until the worker drops it.
        ConnectionLease.objects.filter(server=server, expires_at__lt=now).exclude(
            held_by(live_holders(now), "holder")
        ).delete()
        # Counted under the claim's lock on the server's ServerState row, so it holds across the
        # threads and processes of every worker; 0 is no limit.
        limit = server.limit_connections
        if limit and ConnectionLease.objects.filter(server=server).count() >= limit:
            return False
        lease = ConnectionLease.objects.create(server=server, holder=self.holder, expires_at=until)
        self.connections[server.pk] = Connection(new_transport(server), lease.pk)
        return True

    def renew(self, server_id: int, remaining: list[OutgoingMessage], lease_seconds: float) -> None:
        """Extend the connection lease and the claims of a long batch before they expire."""
        held = self.connections.get(server_id)
        if held is None or time.monotonic() - held.renewed < lease_seconds / 3:
            return
        until = timezone.now() + timedelta(seconds=lease_seconds)
        ConnectionLease.objects.filter(pk=held.lease_id).update(expires_at=until)
        OutgoingMessage.objects.filter(
            pk__in=[m.pk for m in remaining], claimed_by=self.holder, status=Status.SENDING
        ).update(claimed_until=until)
        held.renewed = time.monotonic()

    def drop(self, server_id: int) -> None:
        held = self.connections.pop(server_id, None)
        if held is None:
            return
        self.token_requests += held.transport.token_requests
        held.transport.close()
        ConnectionLease.objects.filter(pk=held.lease_id).delete()

    def close_all(self, keep: set[int] | frozenset[int] = frozenset()) -> None:
        """Close every connection but those of the servers in `keep`."""
        for server_id in list(self.connections):
            if server_id not in keep:
                self.drop(server_id)
