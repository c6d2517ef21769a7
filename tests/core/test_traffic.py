"""The dashboard's traffic charts: sends, deferrals and failures per server, last 24 hours and 7 days."""

from __future__ import annotations

import datetime as dt
import re

from django.test import Client

from mailgate.diagnostics.traffic import traffic
from mailgate.outbox.models import DeliveryAttempt, Outcome, OutgoingMessage
from mailgate.servers.models import MailServer

NOW = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)


def _attempts(server: MailServer, outcome: str, ago: dt.timedelta, count: int) -> None:
    message = OutgoingMessage.objects.create(server=server, from_address="a@example.com", raw=b"x")
    for _ in range(count):
        DeliveryAttempt.objects.create(
            message=message, server=server, outcome=outcome, started_at=NOW - ago
        )


def test_attempts_fall_into_their_hour_and_day(db: None) -> None:
    sales = MailServer.objects.create(name="Sales", smtp_host="127.0.0.1")
    other = MailServer.objects.create(name="Other", smtp_host="127.0.0.1")
    _attempts(sales, Outcome.SENT, dt.timedelta(minutes=10), 5)  # this hour
    _attempts(sales, Outcome.DEFERRED, dt.timedelta(hours=2), 2)
    _attempts(sales, Outcome.THROTTLED, dt.timedelta(hours=2), 1)  # counts as a deferral
    _attempts(sales, Outcome.FAILED, dt.timedelta(days=3), 1)  # in 7 days, not in 24 hours
    _attempts(sales, Outcome.SENT, dt.timedelta(days=9), 4)  # in neither
    _attempts(other, Outcome.SENT, dt.timedelta(hours=1), 1)
    charts = traffic([sales, other], now=NOW)
    day, week = charts[sales.pk]["24h"], charts[sales.pk]["7d"]
    assert (day.total_sent, day.total_deferred, day.total_failed) == (5, 3, 0)
    assert day.buckets[-1]["sent"] == 5 and day.buckets[-3]["deferred"] == 3
    assert (week.total_sent, week.total_deferred, week.total_failed) == (5, 3, 1)
    assert week.buckets[-4]["failed"] == 1
    assert charts[other.pk]["24h"].total_sent == 1
    svg = str(day.svg())
    assert svg.startswith('<svg class="traffic" role="img"')
    assert 'aria-label="Sales, last 24 hours: 5 sent, 3 deferred, 0 failed"' in svg
    assert svg.count("<rect") == 2  # one bar of sends, one of deferrals


def test_the_dashboard_draws_the_charts_with_data(admin_client: Client) -> None:
    server = MailServer.objects.create(name="Sales <&>", smtp_host="127.0.0.1")
    _attempts(server, Outcome.SENT, dt.timedelta(0), 1)
    DeliveryAttempt.objects.update(started_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    page = admin_client.get("/").content.decode()
    assert 'id="traffic"' in page
    labels = re.findall(r'<svg class="traffic" role="img" aria-label="([^"]+)"', page)
    assert labels == [
        "Sales &lt;&amp;&gt;, last 24 hours: 1 sent, 0 deferred, 0 failed",
        "Sales &lt;&amp;&gt;, last 7 days: 1 sent, 0 deferred, 0 failed",
    ]
