"""The delivery worker step: claim due messages per server, send them over up to the server's
Concurrent Connections side by side, record outcomes.

The parts, each with one job: outbox.claims (what is due, batches within the limits),
outbox.connection_pool (one leased connection per server and lane), outbox.outcomes (each message's
row and attempt, committed in order) and the probe of held servers below. A Lane sends over one
connection at a time; Deliverer runs a worker's lanes, each in a thread of its own, and ties them
together.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta

from django.db import close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from mailgate.connections import smtp_transport
from mailgate.core.heartbeat import process_heartbeat
from mailgate.outbox import conf
from mailgate.outbox.claims import (
    Claimer,
    Split,
    due_candidates,
    due_filter,
    release_dead_workers_claims,
    servers_with_due_mail,
)
from mailgate.outbox.connection_pool import ConnectionPool
from mailgate.outbox.diagnosis import Action, classify
from mailgate.outbox.hold import connect_first, held_servers, hold_server, release_server
from mailgate.outbox.models import OutgoingMessage, ServerState
from mailgate.outbox.outcomes import BackgroundRecorder, OutcomeRecorder
from mailgate.servers.models import MailServer
from mailgate.transports.base import Envelope, SendResult, TransportError

log = logging.getLogger("mailgate.outbox")

# How long the delivery step goes on taking new batches while it finds mail, before the worker's
# other steps (heartbeat, holds, inbox, token refresh, ...) have their turn.
KEEP_SENDING_SECONDS = 1.0

__all__ = ["Deliverer", "Lane", "deliver_step", "due_candidates", "due_filter", "get_deliverer"]


def _close_connection() -> None:
    connection.close()  # resolved in the calling thread: that thread's own connection


class Lane:
    """One connection's worth of sending: its holder name, connections, claims and outcomes.

    A lane sends one message at a time over its connection to a server, and commits each outcome
    before the next message can complete, so a crash leaves at most one message per lane to be sent
    twice. Lane 0 runs in the worker's own thread and claims under the process's holder name; lane
    n > 0 runs in a thread of its own, with its own database connection, as "<holder>/t<n>". Its
    own name matters: after a pass that broke off, a lane gives back every claim of its holder,
    which must not take the messages other lanes are sending. The process's heartbeat covers the
    lanes' names (heartbeat.held_by), so a dead worker's lanes are released with it.
    """

    def __init__(self, holder: str, *, overlap: bool, thread: bool) -> None:
        self.holder = holder
        self.heartbeat = process_heartbeat()
        self.pool = ConnectionPool(holder)
        self.claimer = Claimer(holder, self.pool)
        self.outcomes = OutcomeRecorder(holder)
        self.recorder = BackgroundRecorder() if overlap else None
        self.broke_off = False
        self.record_sent: Callable[[MailServer, OutgoingMessage, SendResult], None] = (
            self.outcomes.sent
        )
        self._thread = (
            ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"mailgate-{holder.rsplit('/')[-1]}"
            )
            if thread
            else None
        )

    def close_all(self, keep: set[int] | frozenset[int] = frozenset()) -> None:
        self.pool.close_all(keep)
        if not keep and self.recorder is not None:
            self.recorder.close()

    def close_thread_connection(self) -> None:
        """Close the database connection of the lane's thread (it is idle between passes)."""
        if self._thread is not None:
            self._thread.submit(_close_connection).result()

    def start(
        self, servers: list[tuple[int, Split]], stop: threading.Event
    ) -> Future[tuple[int, set[int]]]:
        """Run a pass in the lane's thread; the future's result is that of pass_()."""
        assert self._thread is not None
        return self._thread.submit(self._pass_in_thread, servers, stop)

    def _pass_in_thread(
        self, servers: list[tuple[int, Split]], stop: threading.Event
    ) -> tuple[int, set[int]]:
        close_old_connections()  # as the worker loop does for its own thread
        try:
            return self.pass_(servers, stop)
        except BaseException:
            connection.close()  # a broken connection is replaced at the next pass
            raise

    def pass_(
        self, servers: list[tuple[int, Split]], stop: threading.Event
    ) -> tuple[int, set[int]]:
        """One batch of each server, its part of the `split` (see Claimer.claim); (how many
        messages were claimed and attempted, servers worked).

        A pass that broke off (the database went away mid-batch) left claims of this lane behind:
        the next pass gives them back first rather than leaving them to the lease.
        """
        if self.broke_off:
            self.claimer.release_all()
            self.broke_off = False
        self.broke_off = True
        attempted = 0
        worked: set[int] = set()
        for server_id, split in servers:
            if stop.is_set():
                break
            claimed = self.claimer.claim(server_id, split)
            if claimed is None:
                continue
            server, messages = claimed
            if not messages:
                continue
            attempted += len(messages)
            worked.add(server_id)
            self.deliver(server, messages, stop)
        # Connections stay open only while their server keeps having due mail.
        self.close_all(keep=set() if stop.is_set() else worked)
        self.broke_off = False
        return attempted, worked

    def deliver(
        self, server: MailServer, messages: list[OutgoingMessage], stop: threading.Event
    ) -> None:
        """Send a claimed batch over the server's connection, recording each outcome as it happens."""
        lease_seconds = conf.get().lease_seconds
        transport = self.pool.transport_for(server)
        remaining = list(messages)
        if not transport.is_open:
            try:
                transport.open()
            except TransportError as exc:
                self.pool.drop(server.pk)
                verdict = classify(exc, server.provider_key)
                for message in remaining:
                    self.outcomes.failure(server, message, exc, verdict, 0.0)
                if verdict.action == Action.HOLD:
                    hold_server(server, verdict.hold_reason(exc))
                return
        recorder = self.recorder
        try:
            while remaining:
                # Stopping, or our heartbeat has not reached the database for so long that other
                # workers may have released our claims: the rest go back to the queue.
                if stop.is_set() or not self.heartbeat.is_current():
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
                    self.pool.drop(server.pk)
                    self.outcomes.failure(
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
                    self.outcomes.failure(server, message, result.error, verdict, result.duration)
                    if verdict.action == Action.HOLD:
                        hold_server(server, verdict.hold_reason(result.error))
                        break
                    if verdict.action == Action.THROTTLE:
                        break
                self.pool.renew(server.pk, remaining, lease_seconds)
        finally:
            if recorder:
                recorder.wait()
        self.claimer.release(remaining)


class Deliverer:
    """The per-process delivery state: its identity and its lanes (connections sending side by side).

    `connections`: how many lanes (threads, each with its own SMTP and database connection) this
    worker may send over at once; None reads MAILGATE_OUTBOX_WORKER_CONNECTIONS at each pass. A
    server gets at most its Concurrent Connections of them, counted in the database across every
    worker (ConnectionPool.lease). The default of one keeps everything in the caller's thread, and
    so does SQLite (see plan()).
    """

    def __init__(
        self, holder: str | None = None, *, overlap: bool = False, connections: int | None = 1
    ) -> None:
        """`overlap`: record outcomes in a thread while the next message starts (BackgroundRecorder)."""
        # The claims carry the name of the process's heartbeat: when it stops, others release them.
        self.heartbeat = process_heartbeat()
        self.holder = holder or self.heartbeat.holder
        self.overlap = overlap
        self.connections = connections
        self.lanes = [Lane(self.holder, overlap=overlap, thread=False)]

    # Lane 0's parts, under the names callers and tests use.
    @property
    def pool(self) -> ConnectionPool:
        return self.lanes[0].pool

    @property
    def claimer(self) -> Claimer:
        return self.lanes[0].claimer

    @property
    def outcomes(self) -> OutcomeRecorder:
        return self.lanes[0].outcomes

    @property
    def recorder(self) -> BackgroundRecorder | None:
        return self.lanes[0].recorder

    @property
    def token_requests(self) -> int:
        return sum(lane.pool.token_requests for lane in self.lanes)

    def claim(self, server_id: int) -> tuple[MailServer, list[OutgoingMessage]] | None:
        """Take up to a batch of due messages of one server within its limits; None when nothing."""
        return self.claimer.claim(server_id)

    def release(self, messages: list[OutgoingMessage]) -> None:
        """Give claimed, unattempted messages back to the queue as they were."""
        self.claimer.release(messages)

    def close_all(self, keep: set[int] | frozenset[int] = frozenset()) -> None:
        for lane in self.lanes:
            lane.close_all(keep)
            if not keep:
                lane.close_thread_connection()

    def record_sent(self, server: MailServer, message: OutgoingMessage, result: SendResult) -> None:
        self.outcomes.sent(server, message, result)

    def deliver(
        self, server: MailServer, messages: list[OutgoingMessage], stop: threading.Event
    ) -> None:
        """Send a claimed batch over lane 0's connection, recording each outcome as it happens."""
        lane = self.lanes[0]
        lane.record_sent = self.record_sent
        lane.deliver(server, messages, stop)

    def _lane(self, number: int) -> Lane:
        while len(self.lanes) <= number:
            self.lanes.append(
                Lane(f"{self.holder}/t{len(self.lanes)}", overlap=self.overlap, thread=True)
            )
        return self.lanes[number]

    def plan(self, server_ids: list[int]) -> list[tuple[int, Split]]:
        """(server, the Split of its batch between the lanes that send its mail) for each server
        with due mail: as many lanes as its Concurrent Connections (0: no limit) and the worker's
        own number allow."""
        most = self.connections or conf.get().worker_connections
        # SQLite takes one writer at a time: each message's DATA waits for the previous outcome's
        # commit, so lanes would queue for the write lock rather than overlap. A worker there sends
        # over one connection (more workers still may).
        if most == 1 or connection.vendor == "sqlite":
            return [(server_id, Split(1)) for server_id in server_ids]
        limits = dict(
            MailServer.objects.filter(pk__in=server_ids).values_list("pk", "limit_connections")
        )
        return [
            (server_id, Split(min(most, limits.get(server_id) or most))) for server_id in server_ids
        ]

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
            if connect_first(server):
                continue  # only connecting the account releases it
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
                self.pool.token_requests += transport.token_requests
                transport.close()
            release_server(server)
        return did

    def step(self, stop: threading.Event) -> bool:
        """Free dead workers' claims, probe held servers, then passes of one batch per server and
        lane, the lanes side by side, while they find mail, for up to KEEP_SENDING_SECONDS; True
        when anything was sent, deferred or probed.

        While mail keeps coming (an application feeding the relay), a pass finds a message or two;
        the worker's other steps between two passes cost more than the pass itself, and took the
        database's write lock that the relay's next INSERT waits for. They run after the step.
        """
        did = release_dead_workers_claims(timezone.now()) > 0
        did = self.probe_held_servers() or did
        config = conf.get()
        until = time.monotonic() + KEEP_SENDING_SECONDS
        while attempted := self.send_pass(stop):
            did = True
            if stop.is_set() or time.monotonic() >= until:
                break
            if attempted < config.batch_size and config.gather_seconds:
                # The pass emptied the queue, yet it found mail: mail is coming in as it is sent
                # (an application feeding the relay or the API one message at a time). Waiting a
                # moment lets the next claim take several messages at once: one claim, and its
                # commit, for a handful of messages instead of one or two.
                stop.wait(min(config.gather_seconds, max(until - time.monotonic(), 0)))
        return did

    def send_pass(self, stop: threading.Event) -> int:
        """One batch per server with due mail and lane, the lanes side by side; how many messages
        were attempted."""
        attempted = 0
        plan = self.plan(servers_with_due_mail(timezone.now()))
        width = max((split.ways for _, split in plan), default=1)
        # The record_sent of lane 0 is this object's (tests wrap it).
        self.lanes[0].record_sent = self.record_sent
        started = [
            self._lane(n).start([(s, split) for s, split in plan if n < split.ways], stop)
            for n in range(1, width)
        ]
        errors: list[BaseException] = []
        try:
            attempted += self.lanes[0].pass_(plan, stop)[0]
        except Exception as exc:
            errors.append(exc)
        for future in started:  # every lane has finished its pass before the step returns
            try:
                attempted += future.result()[0]
            except Exception as exc:
                errors.append(exc)
        for lane in self.lanes[width:]:
            # Not needed this pass: its connections are closed, a broken pass's claims given back.
            if lane.broke_off:
                lane.claimer.release_all()
                lane.broke_off = False
            lane.close_all()
        if errors:
            raise errors[0]
        return attempted


_deliverer: Deliverer | None = None
_deliverer_pid = 0


def get_deliverer() -> Deliverer:
    global _deliverer, _deliverer_pid
    if _deliverer is None or _deliverer_pid != os.getpid():
        _deliverer, _deliverer_pid = Deliverer(overlap=True, connections=None), os.getpid()
    return _deliverer


def deliver_step() -> bool:
    """The worker step (WORKER_STEPS): True when it sent, deferred or probed anything."""
    from mailgate.worker import current_stop_event

    return get_deliverer().step(current_stop_event())
