"""Which messages are due, and taking a batch of one server's within its limits.

Claims are serialized per server by a row lock on its ServerState (and, on PostgreSQL, rows are taken
with SKIP LOCKED); on SQLite the IMMEDIATE transactions give one writer at a time, and the claim is a
compare-and-swap UPDATE. Limits (messages per minute, recipients per day, concurrent connections) are
computed from the database inside that lock, so they hold across any number of workers.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet, Sum
from django.utils import timezone

from mailgate.core.heartbeat import dead_after, dead_workers, held_by
from mailgate.outbox import conf
from mailgate.outbox.connection_pool import ConnectionPool
from mailgate.outbox.hold import connect_first, hold_server, is_held, not_held
from mailgate.outbox.models import (
    WAITING,
    ConnectionLease,
    DeliveryAttempt,
    Outcome,
    OutgoingMessage,
    ServerState,
    Status,
)
from mailgate.servers.models import MailServer

log = logging.getLogger("mailgate.outbox")

MINUTE = timedelta(minutes=1)
# What is left of a limit set to 0 (none): more than any batch or day can use.
UNLIMITED = 1 << 62
DAY = timedelta(days=1)


def due_filter(now: datetime) -> Q:
    """Messages a worker may take: waiting and due, or "sending" with an expired claim (a dead worker)."""
    return Q(status__in=WAITING, next_attempt_at__lte=now) | Q(
        status=Status.SENDING, claimed_until__lt=now
    )


def due_queries(server_id: int, now: datetime) -> list[QuerySet[OutgoingMessage]]:
    """The due messages of one server as queries that are each one range of outbox_server_due_idx
    read in order: one per waiting status, and the "sending" ones whose claim expired.

    One query with `status IN (...)` or the OR of due_filter() cannot be read from the index in
    next_attempt_at order (the order holds only within one status): PostgreSQL then read and sorted
    every due message of the server for each claim (150 ms with 66,000 queued), SQLite scanned every
    message the server ever had.
    """
    return [OutgoingMessage.objects.filter(part, server_id=server_id) for part in _due_parts(now)]


def _due_parts(now: datetime) -> list[Q]:
    return [
        *(Q(status=status, next_attempt_at__lte=now) for status in WAITING),
        Q(status=Status.SENDING, claimed_until__lt=now),
    ]


def claim_queries(server_id: int, now: datetime, limit: int) -> list[QuerySet[Any]]:
    """The statements a claim runs: each of due_queries(), the oldest `limit` first, locked (and
    skipped when locked by another worker) where the database can. tests/outbox/test_depth.py
    checks with EXPLAIN that each reads only its few rows from outbox_server_due_idx."""
    queries = []
    for query in due_queries(server_id, now):
        query = query.order_by("next_attempt_at", "id")
        if connection.features.has_select_for_update_skip_locked:
            query = query.select_for_update(skip_locked=True)
        queries.append(
            query.values_list("next_attempt_at", "id", "recipients_count", "size")[:limit]
        )
    return queries


def due_candidates(server_id: int, now: datetime, limit: int) -> list[tuple[int, int, int]]:
    """(id, recipients, size) of up to `limit` due messages of one server, the longest waiting first
    (each of claim_queries() reads at most `limit` rows from its index, in order)."""
    rows: list[tuple[datetime, int, int, int]] = []
    for query in claim_queries(server_id, now, limit):
        rows += query
    rows.sort()
    return [(pk, count, size) for _, pk, count, size in rows[:limit]]


def servers_with_due_mail(now: datetime) -> list[int]:
    """Active, not held servers with due mail: per server, one probe of outbox_server_due_idx for
    each of due_queries() (a DISTINCT over the due messages read all of them at every pass)."""
    probes = [
        Exists(OutgoingMessage.objects.filter(part, server_id=OuterRef("pk")))
        for part in _due_parts(now)
    ]
    due = Q(probes[0])
    for probe in probes[1:]:
        due |= Q(probe)
    return list(
        MailServer.objects.filter(not_held(), active=True)
        .filter(due)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


class Split:
    """The claims that divide one server's due messages in one pass of a worker's connections.

    Each claim takes its part, rounded up, of what is due when it runs (claims of a server are one
    at a time): with 40 due and 4 ways, 10 of 40, then 10 of 30, 10 of 20, 10 of 10.
    """

    def __init__(self, ways: int) -> None:
        self.ways = max(ways, 1)
        self._left = self.ways
        self._lock = threading.Lock()

    def next_part(self) -> int:
        """How many ways what is due now is divided (this claim's and the ones still to come)."""
        with self._lock:
            ways = self._left
            self._left = max(self._left - 1, 1)
            return ways


class Claimer:
    """Takes batches for one worker (`holder`), leasing a connection slot in `pool` for each."""

    def __init__(self, holder: str, pool: ConnectionPool) -> None:
        self.holder = holder
        self.pool = pool

    def claim(
        self, server_id: int, split: Split | None = None
    ) -> tuple[MailServer, list[OutgoingMessage]] | None:
        """Take up to a batch of due messages of one server within its limits; None when nothing.

        `split`: the claims of this worker's connections in this pass, which divide the batch
        between them rather than the first taking it whole.
        """
        config = conf.get()
        now = timezone.now()
        lease_until = now + timedelta(seconds=config.lease_seconds)
        with transaction.atomic():
            state = ServerState.objects.select_for_update().filter(pk=server_id).first()
            if state is None:  # the server's first claim
                ServerState.objects.get_or_create(server_id=server_id)
                state = ServerState.objects.select_for_update().get(pk=server_id)
            if state.next_allowed_at and state.next_allowed_at > now:
                return None
            server = MailServer.objects.get(pk=server_id)
            if not server.active or is_held(server):
                return None
            if reason := connect_first(server):
                hold_server(server, reason)
                return None
            in_flight = OutgoingMessage.objects.filter(
                server_id=server_id, status=Status.SENDING, claimed_until__gte=now
            ).exclude(claimed_by=self.holder)
            attempts_in_minute = DeliveryAttempt.objects.filter(
                server_id=server_id, started_at__gt=now - MINUTE
            )
            per_minute_left = (
                server.limit_per_minute - attempts_in_minute.count() - in_flight.count()
                if server.limit_per_minute
                else UNLIMITED
            )
            day_left = UNLIMITED
            if server.limit_recipients_per_day:  # the day's recipients are summed only for a limit
                sent_today = (
                    DeliveryAttempt.objects.filter(
                        server_id=server_id, started_at__gt=now - DAY, outcome=Outcome.SENT
                    ).aggregate(n=Sum("recipients"))["n"]
                    or 0
                )
                in_flight_recipients = in_flight.aggregate(n=Sum("recipients_count"))["n"] or 0
                day_left = server.limit_recipients_per_day - sent_today - in_flight_recipients
            if per_minute_left <= 0 or day_left <= 0:
                oldest = attempts_in_minute.order_by("started_at").first()
                wait_until = oldest.started_at + MINUTE if oldest and per_minute_left <= 0 else None
                state.next_allowed_at = wait_until or now + MINUTE
                state.throttle_reason = (
                    f"The server's limit of {server.limit_per_minute} messages per minute is "
                    "reached. Fix: raise Messages per Minute on the server's page if the mail "
                    "server allows more (0 = no limit)."
                    if per_minute_left <= 0
                    else f"The server's limit of {server.limit_recipients_per_day} recipients per "
                    "day is reached. Fix: raise Recipients per Day on the server's page if the mail "
                    "server allows more (0 = no limit)."
                )
                state.save(update_fields=["next_allowed_at", "throttle_reason"])
                return None
            candidates = due_candidates(server_id, now, min(config.batch_size, per_minute_left))
            picked: list[int] = []
            recipients = size = 0
            ways = split.next_part() if split is not None else 1
            for pk, count, nbytes in candidates[: -(-len(candidates) // ways)]:
                if recipients + count > day_left:
                    break
                # A batch is held in memory while it is sent: bounded in bytes as well (a message
                # larger than the bound goes alone).
                if picked and size + nbytes > config.batch_bytes:
                    break
                picked.append(pk)
                recipients += count
                size += nbytes
            if not picked:
                return None
            if not self.pool.lease(server, now, lease_until):
                return None
            # Compare-and-swap: only rows still due are taken (what makes SQLite safe as well).
            OutgoingMessage.objects.filter(pk__in=picked).filter(due_filter(now)).update(
                status=Status.SENDING,
                claimed_by=self.holder,
                claimed_at=now,
                claimed_until=lease_until,
                updated_at=now,
            )
        messages = list(
            OutgoingMessage.objects.filter(
                pk__in=picked, status=Status.SENDING, claimed_by=self.holder
            ).order_by("next_attempt_at", "id")
        )
        return server, messages

    def release_all(self) -> int:
        """Give back every claim of this worker (none is in use between passes); how many.

        A message whose outcome could not be written may have been delivered: it is sent again
        with the same Message-ID, as after a crash.
        """
        now = timezone.now()
        return OutgoingMessage.objects.filter(status=Status.SENDING, claimed_by=self.holder).update(
            claimed_by="", claimed_until=now, updated_at=now
        )

    def release(self, messages: list[OutgoingMessage]) -> None:
        """Give claimed, unattempted messages back to the queue as they were."""
        ids = [m.pk for m in messages]
        if not ids:
            return
        mine = OutgoingMessage.objects.filter(
            pk__in=ids, claimed_by=self.holder, status=Status.SENDING
        )
        now = timezone.now()
        mine.filter(attempts=0).update(
            status=Status.QUEUED, claimed_by="", claimed_until=None, updated_at=now
        )
        mine.update(status=Status.DEFERRED, claimed_by="", claimed_until=None, updated_at=now)


def release_dead_workers_claims(now: datetime) -> int:
    """Make the claims and connection slots of dead workers (heartbeat older than dead_after())
    free at once rather than after their lease; return how many messages were released.

    Only workers seen within the lease are looked at: older claims have expired by themselves.
    A message a dead worker had in flight may have been delivered: it is sent again (with the same
    Message-ID), as after an expired lease.
    """
    dead = dead_workers(now, timedelta(seconds=conf.get().lease_seconds))
    if not dead:
        return 0
    with transaction.atomic():
        released = (
            OutgoingMessage.objects.filter(status=Status.SENDING)
            .filter(held_by(dead, "claimed_by"))
            .update(claimed_by="", claimed_until=now, updated_at=now)
        )
        ConnectionLease.objects.filter(held_by(dead, "holder")).delete()
    if released:
        log.warning(
            "released %d messages claimed by dead workers (no heartbeat for %d s): %s",
            released,
            dead_after().total_seconds(),
            ", ".join(dead),
        )
    return released
