"""`GET /metrics`: Prometheus gauges read from the database on each scrape.

Every number comes from the shared database, so whichever web process answers, the values agree;
no counters live in process memory. A registry of its own keeps the default process and platform
collectors out.
Reference: https://prometheus.io/docs/instrumenting/writing_exporters/#collectors
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from collections.abc import Iterator

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mailgate.core.heartbeat import latest_heartbeat, live_workers
from mailgate.diagnostics.health import Level, incoming_lag, server_reports
from mailgate.inbox.models import FetchState, IncomingMessage
from mailgate.oauth.models import Grant
from mailgate.outbox.hold import is_held
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.servers.models import MailServer, ServerStatus

log = logging.getLogger("mailgate.diagnostics")


def _midnight_utc(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


class MailgateCollector(Collector):
    """Outbox, server, secret, token and worker gauges, computed from the database per scrape."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "mailgate_database_up",
            "1 when this scrape read its gauges from the database, else 0 (the web log says why).",
        )
        try:
            metrics = list(self._from_database(timezone.now()))
        except Exception:
            log.exception("metrics: reading the database failed")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _from_database(self, now: dt.datetime) -> Iterator[Metric]:
        servers = list(MailServer.objects.order_by("name"))
        names = {s.pk: s.name for s in servers}

        messages = GaugeMetricFamily(
            "mailgate_outbox_messages",
            "Outbox messages by server and status.",
            labels=["server", "status"],
        )
        counts = {
            (server_id, status): n
            for server_id, status, n in OutgoingMessage.objects.order_by()
            .values("server_id", "status")
            .annotate(n=Count("id"))
            .values_list("server_id", "status", "n")
        }
        for server in servers:
            for status in Status.values:
                messages.add_metric([server.name, status], counts.get((server.pk, status), 0))
        yield messages

        by_status = GaugeMetricFamily(
            "mailgate_servers", "Mail servers by status.", labels=["status"]
        )
        tally = {status: 0 for status in ServerStatus.values}
        for server in servers:
            tally[server.status] = tally.get(server.status, 0) + 1
        for status, n in tally.items():
            by_status.add_metric([status], n)
        yield by_status

        active = GaugeMetricFamily(
            "mailgate_server_active", "1 when the server is Active.", labels=["server"]
        )
        held = GaugeMetricFamily(
            "mailgate_server_held",
            "1 while the server's outgoing queue is held.",
            labels=["server"],
        )
        for server in servers:
            active.add_metric([server.name], int(server.active))
            held.add_metric([server.name], int(is_held(server)))
        yield active
        yield held

        problems = GaugeMetricFamily(
            "mailgate_server_problems",
            "Findings that need action per server (as on the dashboard and in `mailgate doctor`).",
            labels=["server", "level"],
        )
        for report in server_reports(servers, now=now):
            for level in (Level.WARNING, Level.ERROR):
                n = sum(1 for f in report.findings if f.level == level)
                problems.add_metric([report.server.name, str(level)], n)
        yield problems

        secrets = GaugeMetricFamily(
            "mailgate_client_secret_expiry_seconds",
            "Seconds until the client secret expires (from Client Secret Expires On; negative "
            "once expired).",
            labels=["server"],
        )
        for server in servers:
            if server.is_oauth and server.client_secret_expires_on is not None:
                until = _midnight_utc(server.client_secret_expires_on) - now
                secrets.add_metric([server.name], until.total_seconds())
        yield secrets

        tokens = GaugeMetricFamily(
            "mailgate_access_token_expiry_seconds",
            "Seconds until the stored access token expires (negative once expired; mailgate "
            "refreshes it when needed).",
            labels=["server"],
        )
        grants = (
            Grant.objects.filter(access_expires_at__isnull=False)
            .order_by()
            .values_list("server_id", "access_expires_at")
        )
        for server_id, expires_at in grants:
            if server_id in names and expires_at is not None:
                tokens.add_metric([names[server_id]], (expires_at - now).total_seconds())
        yield tokens

        yield from _inbox_metrics(servers, names, now)

        last = latest_heartbeat()
        seen = GaugeMetricFamily(
            "mailgate_worker_last_seen_seconds",
            "Seconds since any worker last recorded its heartbeat (+Inf when none in the last day).",
        )
        seen.add_metric([], (now - last.last_seen_at).total_seconds() if last else float("inf"))
        yield seen
        workers = GaugeMetricFamily(
            "mailgate_workers", "Workers that recorded a heartbeat in the last 5 minutes."
        )
        workers.add_metric([], len(live_workers(now)))
        yield workers


def _inbox_metrics(
    servers: list[MailServer], names: dict[int, str], now: dt.datetime
) -> Iterator[Metric]:
    """Incoming mail: messages fetched, fetch errors and lag per server, messages by status."""
    fetched = GaugeMetricFamily(
        "mailgate_inbox_fetched_messages",
        "Messages fetched and stored since the server was set up.",
        labels=["server"],
    )
    errors = GaugeMetricFamily(
        "mailgate_inbox_fetch_errors", "Failed fetches since set-up.", labels=["server"]
    )
    failing = GaugeMetricFamily(
        "mailgate_inbox_fetch_failures",
        "Failed fetches in a row (0 after a success).",
        labels=["server"],
    )
    lag = GaugeMetricFamily(
        "mailgate_inbox_lag_seconds",
        "Seconds since the last successful fetch (+Inf when none yet).",
        labels=["server"],
    )
    states = {s.pk: s for s in FetchState.objects.all()}
    for server in servers:
        if not server.has_incoming:
            continue
        state = states.get(server.pk)
        fetched.add_metric([server.name], state.fetched_total if state else 0)
        errors.add_metric([server.name], state.errors_total if state else 0)
        failing.add_metric([server.name], state.failures if state else 0)
        behind = incoming_lag(state, now)
        lag.add_metric([server.name], behind.total_seconds() if behind else float("inf"))
    yield from (fetched, errors, failing, lag)
    messages = GaugeMetricFamily(
        "mailgate_inbox_messages",
        "Incoming messages by server and status.",
        labels=["server", "status"],
    )
    for server_id, status, n in (
        IncomingMessage.objects.order_by()
        .values("server_id", "status")
        .annotate(n=Count("id"))
        .values_list("server_id", "status", "n")
    ):
        messages.add_metric([names.get(server_id, str(server_id)), status], n)
    yield messages


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(MailgateCollector())


@login_not_required
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition of REGISTRY; with MAILGATE_METRICS_TOKEN set, only for a
    request carrying `Authorization: Bearer <token>` (Prometheus: `authorization.credentials`)."""
    token = settings.MAILGATE_METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            response = HttpResponse(
                "Authorization: /metrics needs 'Authorization: Bearer <MAILGATE_METRICS_TOKEN>'\n",
                status=401,
                content_type="text/plain; charset=utf-8",
            )
            response["WWW-Authenticate"] = 'Bearer realm="mailgate-metrics"'
            return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
