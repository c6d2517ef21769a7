"""Recording what happened to each message: its row and a DeliveryAttempt, committed together."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, cast

from django.db import connection, models, transaction
from django.db.models import Q
from django.utils import timezone

from mailgate.outbox import conf, retry
from mailgate.outbox.diagnosis import Action, Verdict
from mailgate.outbox.models import DeliveryAttempt, Outcome, OutgoingMessage, ServerState, Status
from mailgate.servers.models import MailServer
from mailgate.transports.base import SendResult, TransportError

log = logging.getLogger("mailgate.outbox")


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


class BackgroundRecorder:
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


class OutcomeRecorder:
    """Writes outcomes of the messages one worker (`holder`) claimed; a claim moved on wins."""

    def __init__(self, holder: str) -> None:
        self.holder = holder

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

    def _write(
        self, message: OutgoingMessage, changes: dict[str, object], attempt: DeliveryAttempt
    ) -> None:
        """The message's new state (if this worker still holds its claim) and its attempt row."""
        with transaction.atomic():
            OutgoingMessage.objects.filter(self._mine(message)).update(**changes)
            attempt.save()

    def sent(self, server: MailServer, message: OutgoingMessage, result: SendResult) -> None:
        later = [
            rcpt for rcpt, reply in result.refused.items() if reply.code is None or reply.code < 500
        ]
        if later:
            self._partly_sent(server, message, result, later)
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
        else:
            # One line per outcome (sent, deferred, throttled, held, failed), for `journalctl -f`.
            log.info(
                "sent message %s via %s to %d recipient(s): %s",
                message.pk,
                server.name,
                message.recipients_count,
                reply,
                extra={"server": server.name, "message_id": message.message_id},
            )

    def _partly_sent(
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
        attempt = self._attempt(
            server,
            message,
            outcome,
            result.duration,
            reply=str(result.reply),
            code=result.reply.code,
            error=error,
            step="rcpt",
        )
        self._write(message, changes, attempt)

    def failure(
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
        attempt = self._attempt(
            server,
            message,
            outcome,
            duration,
            reply=reply,
            code=error.reply.code,
            error=str(error),
            step=error.step,
        )
        self._write(message, changes, attempt)
        log_level = logging.WARNING if outcome in (Outcome.FAILED, Outcome.HELD) else logging.INFO
        log.log(
            log_level,
            "%s message %s via %s at %s: %s%s",
            outcome,
            message.pk,
            server.name,
            error.step or "connect",
            reply or error,
            f" ({verdict.diagnosis})" if verdict.diagnosis else "",
            extra={"server": server.name, "message_id": message.message_id},
        )
