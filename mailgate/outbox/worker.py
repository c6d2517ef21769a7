"""The delivery worker step: claim due messages per server, send them over one connection, record outcomes.

The parts, each with one job: outbox.claims (what is due, batches within the limits),
outbox.connection_pool (one leased connection per server), outbox.outcomes (each message's row and
attempt, committed in order) and the probe of held servers below. Deliverer ties them together.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from mailgate.connections import smtp_transport
from mailgate.core.heartbeat import process_heartbeat
from mailgate.outbox import conf
from mailgate.outbox.claims import (
    Claimer,
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

__all__ = ["Deliverer", "deliver_step", "due_candidates", "due_filter", "get_deliverer"]


class Deliverer:
    """The per-process delivery state: its identity, its connections, its claims and outcomes."""

    def __init__(self, holder: str | None = None, *, overlap: bool = False) -> None:
        """`overlap`: record outcomes in a thread while the next message starts (BackgroundRecorder)."""
        # The claims carry the name of the process's heartbeat: when it stops, others release them.
        self.heartbeat = process_heartbeat()
        self.holder = holder or self.heartbeat.holder
        self.pool = ConnectionPool(self.holder)
        self.claimer = Claimer(self.holder, self.pool)
        self.outcomes = OutcomeRecorder(self.holder)
        self.recorder = BackgroundRecorder() if overlap else None
        self.broke_off = False

    @property
    def token_requests(self) -> int:
        return self.pool.token_requests

    def claim(self, server_id: int) -> tuple[MailServer, list[OutgoingMessage]] | None:
        """Take up to a batch of due messages of one server within its limits; None when nothing."""
        return self.claimer.claim(server_id)

    def release(self, messages: list[OutgoingMessage]) -> None:
        """Give claimed, unattempted messages back to the queue as they were."""
        self.claimer.release(messages)

    def close_all(self, keep: set[int] | frozenset[int] = frozenset()) -> None:
        self.pool.close_all(keep)
        if not keep and self.recorder is not None:
            self.recorder.close()

    def record_sent(self, server: MailServer, message: OutgoingMessage, result: SendResult) -> None:
        self.outcomes.sent(server, message, result)

    # -- sending -----------------------------------------------------------------------------

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
        self.release(remaining)

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
        """One pass: free dead workers' claims, probe held servers, then one batch per server.

        A pass that broke off (the database went away mid-batch) left claims of this worker
        behind: the next pass gives them back first rather than leaving them to the lease.
        """
        if self.broke_off:
            self.claimer.release_all()
            self.broke_off = False
        self.broke_off = True
        did = self._step(stop)
        self.broke_off = False
        return did

    def _step(self, stop: threading.Event) -> bool:
        did = release_dead_workers_claims(timezone.now()) > 0
        did = self.probe_held_servers() or did
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


def get_deliverer() -> Deliverer:
    global _deliverer, _deliverer_pid
    if _deliverer is None or _deliverer_pid != os.getpid():
        _deliverer, _deliverer_pid = Deliverer(overlap=True), os.getpid()
    return _deliverer


def deliver_step() -> bool:
    """The worker step (WORKER_STEPS): True when it sent, deferred or probed anything."""
    from mailgate.worker import current_stop_event

    return get_deliverer().step(current_stop_event())
