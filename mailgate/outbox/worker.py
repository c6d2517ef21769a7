"""The delivery worker step: claim due messages per server, send them over one connection, record outcomes.

Claims are serialized per server by a row lock on its ServerState (and, on PostgreSQL, rows are taken
with SKIP LOCKED); on SQLite the IMMEDIATE transactions give one writer at a time, and the claim is a
compare-and-swap UPDATE. Limits (messages per minute, recipients per day, concurrent connections) are
computed from the database inside that lock, so they hold across any number of workers.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from django.db import connection, models, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from mailgate.connections import smtp_transport
from mailgate.outbox import conf, retry
from mailgate.outbox.diagnosis import Action, Verdict, classify
from mailgate.outbox.hold import held_servers, hold_server, is_held, not_held, release_server
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
from mailgate.transports.base import Envelope, SendResult, TransportError
from mailgate.transports.smtp import SMTPTransport

log = logging.getLogger("mailgate.outbox")

MINUTE = timedelta(minutes=1)
DAY = timedelta(days=1)


def due_filter(now: datetime) -> Q:
    """Messages a worker may take: waiting and due, or "sending" with an expired claim (a dead worker)."""
    return Q(status__in=WAITING, next_attempt_at__lte=now) | Q(
        status=Status.SENDING, claimed_until__lt=now
    )


def due_candidates(server_id: int, now: datetime, limit: int) -> list[tuple[int, int, int]]:
    """(id, recipients, size) of up to `limit` due messages of one server, the longest waiting first.

    The two halves of due_filter() are separate queries so that each one is an index range on
    outbox_server_due_idx: one query with the OR scanned every message the server ever had (on
    SQLite reading each row's overflow pages for next_attempt_at, stored after the message bytes).
    """
    waiting = OutgoingMessage.objects.filter(
        server_id=server_id, status__in=WAITING, next_attempt_at__lte=now
    )
    abandoned = OutgoingMessage.objects.filter(
        server_id=server_id, status=Status.SENDING, claimed_until__lt=now
    )
    rows: list[tuple[datetime, int, int, int]] = []
    for query in (waiting, abandoned):
        query = query.order_by("next_attempt_at", "id")
        if connection.features.has_select_for_update_skip_locked:
            query = query.select_for_update(skip_locked=True)
        rows += query.values_list("next_attempt_at", "id", "recipients_count", "size")[:limit]
    rows.sort()
    return [(pk, count, size) for _, pk, count, size in rows[:limit]]


def servers_with_due_mail(now: datetime) -> list[int]:
    return list(
        OutgoingMessage.objects.filter(due_filter(now))
        .filter(not_held("server__"), server__active=True)
        .order_by()
        .values_list("server_id", flat=True)
        .distinct()
    )


def _fields(model: type[models.Model], names: list[str]) -> list[models.Field[Any, Any]]:
    return [cast("models.Field[Any, Any]", model._meta.get_field(name)) for name in names]


class _OutcomeWriter:
    """The UPDATE of a message row and the INSERT of its attempt row, committed together.

    This is the worker's database cost per message, so the SQL is written once from the models'
    metadata instead of building two ORM queries per message (that took longer than running
    them). Values still go through each field's get_db_prep_save(), as the ORM would convert them.
    """

    def __init__(self, columns: list[str], where: list[str], attempt_columns: list[str]) -> None:
        self.columns = _fields(OutgoingMessage, columns)
        self.where = _fields(OutgoingMessage, where)
        self.attempt_columns = _fields(DeliveryAttempt, attempt_columns)
        self._sql: dict[str, tuple[str, str, str]] = {}

    def _statements(self) -> tuple[str, str, str]:
        """UPDATE, INSERT and, for PostgreSQL, both as one statement."""
        if connection.vendor not in self._sql:
            quote = connection.ops.quote_name
            # Table and column names come from the models, never from input; values are parameters.
            message_table = quote(OutgoingMessage._meta.db_table)
            attempt_table = quote(DeliveryAttempt._meta.db_table)
            assignments = ", ".join(f"{quote(str(f.column))} = %s" for f in self.columns)
            conditions = " AND ".join(f"{quote(str(f.column))} = %s" for f in self.where)
            names = ", ".join(quote(str(f.column)) for f in self.attempt_columns)
            marks = ", ".join(["%s"] * len(self.attempt_columns))
            update = f"UPDATE {message_table} SET {assignments} WHERE {conditions}"  # noqa: S608
            insert = f"INSERT INTO {attempt_table} ({names}) VALUES ({marks})"  # noqa: S608
            # Data-modifying WITH parts always run to completion, referenced or not.
            # Reference: https://www.postgresql.org/docs/current/queries-with.html#QUERIES-WITH-MODIFYING
            both = (
                f"WITH updated AS ({update} RETURNING 1) {insert} "  # noqa: S608
                "RETURNING (SELECT COUNT(*) FROM updated)"
            )
            self._sql[connection.vendor] = (update, insert, both)
        return self._sql[connection.vendor]

    def write(self, values: dict[str, Any], where: dict[str, Any], attempt: dict[str, Any]) -> int:
        """Update the message where `where` matches and add the attempt; the messages updated."""
        update, insert, both = self._statements()
        params = [f.get_db_prep_save(values[f.name], connection) for f in self.columns]
        params += [f.get_db_prep_save(where[f.name], connection) for f in self.where]
        attempt_params = [
            f.get_db_prep_save(attempt[f.name], connection) for f in self.attempt_columns
        ]
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # One statement is atomic by itself: one round trip instead of four (BEGIN,
                # UPDATE, INSERT, COMMIT).
                cursor.execute(both, [*params, *attempt_params])
                row = cursor.fetchone()
                return int(row[0]) if row else 0
            with transaction.atomic():
                cursor.execute(update, params)
                updated = int(cursor.rowcount)
                cursor.execute(insert, attempt_params)
            return updated


_RECORD_SENT = _OutcomeWriter(
    [
        "status",
        "sent_at",
        "attempts",
        "last_reply",
        "queue_id",
        "last_error",
        "diagnosis",
        "claimed_by",
        "claimed_until",
        "updated_at",
    ],
    ["id", "claimed_by", "status"],
    [
        "message",
        "server",
        "started_at",
        "duration_ms",
        "outcome",
        "step",
        "reply_code",
        "reply",
        "error",
        "recipients",
        "worker",
    ],
)


class _Recorder:
    """Commits sent messages' outcomes in a thread of its own, one at a time, in order.

    The database write of message N then overlaps the MAIL FROM and RCPT TO round trips of message
    N+1; `wait()` before N+1's DATA keeps the guarantee that after a crash at most the one message in
    flight per connection is sent twice. The thread has its own database connection.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailgate-record")
        self._pending: Future[None] | None = None
        self._connected = False

    def submit(self, record: Callable[..., None], *args: object) -> None:
        self.wait()
        self._connected = True
        self._pending = self._pool.submit(self._run, record, *args)

    def close(self) -> None:
        """Wait for the last outcome, then close the thread's database connection."""
        self.wait()
        if self._connected:
            self._connected = False
            self._pool.submit(self._close).result()

    @staticmethod
    def _close() -> None:
        connection.close()  # resolved in the recording thread: its own connection

    def wait(self) -> None:
        """Block until the last outcome is committed; raise its error if the write failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    @staticmethod
    def _run(record: Callable[..., None], *args: object) -> None:
        try:
            record(*args)
        except BaseException:
            # A broken connection is replaced at the next write rather than failing every one.
            connection.close()
            raise


@dataclass
class Connection:
    transport: SMTPTransport
    lease_id: int
    renewed: float = field(default_factory=time.monotonic)


class Deliverer:
    """The per-process delivery state: its identity and its open connections, one per server."""

    def __init__(self, holder: str | None = None, *, overlap: bool = False) -> None:
        """`overlap`: record outcomes in a thread while the next message starts (see _Recorder)."""
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.connections: dict[int, Connection] = {}
        self.token_requests = 0
        self.recorder = _Recorder() if overlap else None

    # -- claiming ----------------------------------------------------------------------------

    def claim(self, server_id: int) -> tuple[MailServer, list[OutgoingMessage]] | None:
        """Take up to a batch of due messages of one server within its limits; None when nothing."""
        config = conf.get()
        now = timezone.now()
        lease_until = now + timedelta(seconds=config.lease_seconds)
        with transaction.atomic():
            ServerState.objects.get_or_create(server_id=server_id)
            state = ServerState.objects.select_for_update().get(pk=server_id)
            if state.next_allowed_at and state.next_allowed_at > now:
                return None
            server = MailServer.objects.get(pk=server_id)
            if not server.active or is_held(server):
                return None
            in_flight = OutgoingMessage.objects.filter(
                server_id=server_id, status=Status.SENDING, claimed_until__gte=now
            ).exclude(claimed_by=self.holder)
            attempts_in_minute = DeliveryAttempt.objects.filter(
                server_id=server_id, started_at__gt=now - MINUTE
            )
            per_minute_left = (
                server.limit_per_minute - attempts_in_minute.count() - in_flight.count()
            )
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
                    f"limit of {server.limit_per_minute} messages per minute reached"
                    if per_minute_left <= 0
                    else f"limit of {server.limit_recipients_per_day} recipients per day reached"
                )
                state.save(update_fields=["next_allowed_at", "throttle_reason"])
                return None
            picked: list[int] = []
            recipients = size = 0
            for pk, count, nbytes in due_candidates(
                server_id, now, min(config.batch_size, per_minute_left)
            ):
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
            if not self._lease_connection(server, now, lease_until):
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

    def _lease_connection(self, server: MailServer, now: datetime, until: datetime) -> bool:
        """Hold (or renew) this worker's connection slot for the server; False when all are taken."""
        open_connection = self.connections.get(server.pk)
        if open_connection is not None:
            renewed = ConnectionLease.objects.filter(pk=open_connection.lease_id).update(
                expires_at=until
            )
            if renewed:
                open_connection.renewed = time.monotonic()
                return True
            self._drop(server.pk)
        ConnectionLease.objects.filter(server=server, expires_at__lt=now).delete()
        if ConnectionLease.objects.filter(server=server).count() >= server.limit_connections:
            return False
        lease = ConnectionLease.objects.create(server=server, holder=self.holder, expires_at=until)
        self.connections[server.pk] = Connection(_new_transport(server), lease.pk)
        return True

    def _renew(
        self, server_id: int, remaining: list[OutgoingMessage], lease_seconds: float
    ) -> None:
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

    def _drop(self, server_id: int) -> None:
        held = self.connections.pop(server_id, None)
        if held is None:
            return
        self.token_requests += held.transport.token_requests
        held.transport.close()
        ConnectionLease.objects.filter(pk=held.lease_id).delete()

    def close_all(self, keep: set[int] | frozenset[int] = frozenset()) -> None:
        for server_id in list(self.connections):
            if server_id not in keep:
                self._drop(server_id)
        if not keep and self.recorder is not None:
            self.recorder.close()

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

    # -- sending -----------------------------------------------------------------------------

    def deliver(
        self, server: MailServer, messages: list[OutgoingMessage], stop: threading.Event
    ) -> None:
        """Send a claimed batch over the server's connection, recording each outcome as it happens."""
        held = self.connections[server.pk]
        lease_seconds = conf.get().lease_seconds
        if not held.transport.is_open:
            # A new connection uses the server's current settings and credential.
            held.transport = _new_transport(server)
        transport = held.transport
        remaining = list(messages)
        if not transport.is_open:
            try:
                transport.open()
            except TransportError as exc:
                self._drop(server.pk)
                verdict = classify(exc, server.provider_key)
                for message in remaining:
                    self.record_failure(server, message, exc, verdict, 0.0)
                if verdict.action == Action.HOLD:
                    hold_server(server, self._reason(exc, verdict))
                return
        recorder = self.recorder
        try:
            while remaining:
                if stop.is_set():
                    break
                message = remaining.pop(0)
                envelope = Envelope(
                    message.from_address, message.envelope_recipients, message.raw_bytes, message.pk
                )
                started = time.monotonic()
                try:
                    result = transport.send_message(
                        envelope, before_data=recorder.wait if recorder else None
                    )
                except TransportError as exc:
                    # The connection died with this message in flight: it may have been delivered;
                    # it is retried with the same Message-ID.
                    if recorder:
                        recorder.wait()
                    self._drop(server.pk)
                    self.record_failure(
                        server,
                        message,
                        exc,
                        classify(exc, server.provider_key),
                        time.monotonic() - started,
                    )
                    break
                if result.ok:
                    if recorder:
                        recorder.submit(self.record_sent, server, message, result)
                    else:
                        self.record_sent(server, message, result)
                else:
                    assert result.error is not None
                    if recorder:
                        recorder.wait()
                    verdict = classify(result.error, server.provider_key)
                    self.record_failure(server, message, result.error, verdict, result.duration)
                    if verdict.action == Action.HOLD:
                        hold_server(server, self._reason(result.error, verdict))
                        break
                    if verdict.action == Action.THROTTLE:
                        break
                self._renew(server.pk, remaining, lease_seconds)
        finally:
            if recorder:
                recorder.wait()
        self.release(remaining)

    @staticmethod
    def _reason(error: TransportError, verdict: Verdict) -> str:
        return verdict.hold_reason(error)

    def _attempt(
        self,
        server: MailServer,
        message: OutgoingMessage,
        outcome: str,
        duration: float,
        *,
        reply: str = "",
        code: int | None = None,
        error: str = "",
        step: str = "",
    ) -> DeliveryAttempt:
        return DeliveryAttempt(
            message=message,
            server=server,
            started_at=timezone.now() - timedelta(seconds=duration),
            duration_ms=int(duration * 1000),
            outcome=outcome,
            step=step,
            reply_code=code,
            reply=reply[:2000],
            error=error[:2000],
            recipients=message.recipients_count,
            worker=self.holder,
        )

    def _mine(self, message: OutgoingMessage) -> Q:
        return Q(pk=message.pk, claimed_by=self.holder, status=Status.SENDING)

    def record_sent(self, server: MailServer, message: OutgoingMessage, result: SendResult) -> None:
        later = [
            rcpt for rcpt, reply in result.refused.items() if reply.code is None or reply.code < 500
        ]
        if later:
            self._record_partly_sent(server, message, result, later)
            return
        now = timezone.now()
        refused = "; ".join(f"{rcpt}: {reply}" for rcpt, reply in result.refused.items())
        reply = str(result.reply)
        error = f"refused recipients: {refused}" if refused else ""
        updated = _RECORD_SENT.write(
            {
                "status": Status.SENT,
                "sent_at": now,
                "attempts": message.attempts + 1,
                "last_reply": reply,
                "queue_id": result.queue_id,
                "last_error": error,
                "diagnosis": "",
                "claimed_by": "",
                "claimed_until": None,
                "updated_at": now,
            },
            {"id": message.pk, "claimed_by": self.holder, "status": Status.SENDING},
            {
                "message": message.pk,
                "server": server.pk,
                "started_at": now - timedelta(seconds=result.duration),
                "duration_ms": int(result.duration * 1000),
                "outcome": Outcome.SENT,
                "step": "data",
                "reply_code": result.reply.code,
                "reply": reply[:2000],
                "error": error[:2000],
                "recipients": message.recipients_count,
                "worker": self.holder,
            },
        )
        if not updated:
            log.warning("message %s was sent but its claim had moved on", message.pk)

    def _record_partly_sent(
        self, server: MailServer, message: OutgoingMessage, result: SendResult, later: list[str]
    ) -> None:
        """Delivered to some recipients, refused for now (4xx) for `later`: retry only those."""
        now = timezone.now()
        refused = "; ".join(f"{rcpt}: {reply}" for rcpt, reply in result.refused.items())
        error = f"delivered to the other recipients; refused: {refused}"
        retries = message.retries + 1
        when = retry.next_attempt(message.created_at, now, retries)
        changes: dict[str, object] = {
            "attempts": message.attempts + 1,
            "last_reply": str(result.reply),
            "queue_id": result.queue_id,
            "last_error": error[:4000],
            "pending_recipients": later,
            "claimed_by": "",
            "claimed_until": None,
            "updated_at": now,
        }
        if when is None:
            changes.update(
                status=Status.FAILED,
                diagnosis=f"Given up on {', '.join(later)} after {message.attempts + 1} attempts "
                f"over {timedelta(seconds=conf.get().max_age)}; the other recipients got it.",
            )
            outcome = Outcome.FAILED
        else:
            changes.update(
                status=Status.DEFERRED,
                retries=retries,
                next_attempt_at=when,
                diagnosis="Some recipients were refused for now (4xx); only they are retried.",
            )
            outcome = Outcome.DEFERRED
        with transaction.atomic():
            OutgoingMessage.objects.filter(self._mine(message)).update(**changes)
            self._attempt(
                server,
                message,
                outcome,
                result.duration,
                reply=str(result.reply),
                code=result.reply.code,
                error=error,
                step="rcpt",
            ).save()

    def record_failure(
        self,
        server: MailServer,
        message: OutgoingMessage,
        error: TransportError,
        verdict: Verdict,
        duration: float,
    ) -> None:
        now = timezone.now()
        reply = str(error.reply) if error.reply.code is not None else ""
        changes: dict[str, object] = {
            "attempts": message.attempts + 1,
            "last_error": str(error)[:4000],
            "last_reply": reply,
            "diagnosis": verdict.diagnosis,
            "claimed_by": "",
            "claimed_until": None,
            "updated_at": now,
        }
        outcome: str
        if verdict.action == Action.FAIL:
            changes["status"] = Status.FAILED
            outcome = Outcome.FAILED
        elif verdict.action == Action.HOLD:
            changes["status"] = Status.HELD
            outcome = Outcome.HELD
        else:
            if verdict.action == Action.THROTTLE:
                retries = message.retries
                pause_until = now + timedelta(seconds=verdict.pause)
                ServerState.objects.filter(pk=server.pk).update(
                    next_allowed_at=pause_until, throttle_reason=verdict.diagnosis
                )
                limit = retry.deadline(message.created_at)
                when: datetime | None = min(pause_until, limit) if now < limit else None
                outcome = Outcome.THROTTLED
            else:
                retries = message.retries + 1
                when = retry.next_attempt(message.created_at, now, retries)
                outcome = Outcome.DEFERRED
            if when is None:
                changes["status"] = Status.FAILED
                changes["diagnosis"] = (
                    f"Given up after {message.attempts + 1} attempts over "
                    f"{timedelta(seconds=conf.get().max_age)}: {verdict.diagnosis}"
                )
                outcome = Outcome.FAILED
            else:
                changes.update(status=Status.DEFERRED, retries=retries, next_attempt_at=when)
        with transaction.atomic():
            OutgoingMessage.objects.filter(self._mine(message)).update(**changes)
            self._attempt(
                server,
                message,
                outcome,
                duration,
                reply=reply,
                code=error.reply.code,
                error=str(error),
                step=error.step,
            ).save()

    # -- held servers ------------------------------------------------------------------------

    def probe_held_servers(self) -> bool:
        """Try to authenticate with each held server now and then; release it when that works."""
        config = conf.get()
        now = timezone.now()
        probe_before = now - timedelta(seconds=config.probe_seconds)
        did = False
        # Held a while ago: a server held just now is not probed at once.
        for server in (
            held_servers().filter(active=True, held_at__lte=probe_before).exclude(smtp_host="")
        ):
            ServerState.objects.get_or_create(server=server)
            # Compare-and-swap on last_probe_at: one worker probes, the others skip.
            taken = (
                ServerState.objects.filter(pk=server.pk)
                .filter(Q(last_probe_at__isnull=True) | Q(last_probe_at__lte=probe_before))
                .update(last_probe_at=now)
            )
            if not taken:
                continue
            did = True
            transport = smtp_transport(server, timeout=config.smtp_timeout)
            try:
                transport.open()
            except TransportError as exc:
                log.info("held server %s still failing: %s", server.name, exc)
                continue
            finally:
                self.token_requests += transport.token_requests
                transport.close()
            release_server(server)
        return did

    def step(self, stop: threading.Event) -> bool:
        """One pass: probe held servers, then one batch per server with due mail."""
        did = self.probe_held_servers()
        worked: set[int] = set()
        for server_id in servers_with_due_mail(timezone.now()):
            if stop.is_set():
                break
            claimed = self.claim(server_id)
            if claimed is None:
                continue
            server, messages = claimed
            if not messages:
                continue
            did = True
            worked.add(server_id)
            self.deliver(server, messages, stop)
        # Connections stay open only while their server keeps having due mail.
        self.close_all(keep=set() if stop.is_set() else worked)
        return did


_deliverer: Deliverer | None = None
_deliverer_pid = 0


def _new_transport(server: MailServer) -> SMTPTransport:
    config = conf.get()
    return smtp_transport(
        server,
        timeout=config.smtp_timeout,
        pipelining=config.smtp_pipelining,
        chunking=config.smtp_chunking,
    )


def get_deliverer() -> Deliverer:
    global _deliverer, _deliverer_pid
    if _deliverer is None or _deliverer_pid != os.getpid():
        _deliverer, _deliverer_pid = Deliverer(overlap=True), os.getpid()
    return _deliverer


def deliver_step() -> bool:
    """The worker step (WORKER_STEPS): True when it sent, deferred or probed anything."""
    from mailgate.worker import current_stop_event

    return get_deliverer().step(current_stop_event())
