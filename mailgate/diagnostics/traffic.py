"""Sends, deferrals and failures per server over the last 24 hours and 7 days, drawn as SVG.

The counts come from the delivery attempts (one row per attempt, with its outcome); the charts are
plain SVG built here, so the dashboard needs no script and nothing from a CDN.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.db.models import Count
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from mailgate.outbox.models import DeliveryAttempt, Outcome
from mailgate.servers.models import MailServer

# What each bar shows, bottom to top, with its colour (the dashboard's ok / warn / bad).
SERIES = (
    ("sent", "Sent", "#1a7f37", (Outcome.SENT,)),
    ("deferred", "Deferred", "#9a6700", (Outcome.DEFERRED, Outcome.THROTTLED, Outcome.HELD)),
    ("failed", "Failed", "#cf222e", (Outcome.FAILED,)),
)
WIDTH, HEIGHT = 240, 48


@dataclass(frozen=True)
class Period:
    key: str
    label: str
    buckets: int
    size: dt.timedelta
    trunc: type[TruncHour] | type[TruncDay]

    def first_bucket(self, now: dt.datetime) -> dt.datetime:
        """The start of the oldest bucket: buckets are whole hours / days (UTC), the newest
        being the current one."""
        if self.size >= dt.timedelta(days=1):
            current = now.replace(hour=0, minute=0, second=0, microsecond=0)
        else:
            current = now.replace(minute=0, second=0, microsecond=0)
        return current - self.size * (self.buckets - 1)


PERIODS = (
    Period("24h", "Last 24 hours", 24, dt.timedelta(hours=1), TruncHour),
    Period("7d", "Last 7 days", 7, dt.timedelta(days=1), TruncDay),
)


@dataclass
class Chart:
    """One server's counts in one period: per bucket (oldest first) and in total."""

    server: MailServer
    period: Period
    buckets: list[dict[str, int]] = field(default_factory=list)

    def total(self, series: str) -> int:
        return sum(b[series] for b in self.buckets)

    @property
    def total_sent(self) -> int:
        return self.total("sent")

    @property
    def total_deferred(self) -> int:
        return self.total("deferred")

    @property
    def total_failed(self) -> int:
        return self.total("failed")

    @property
    def summary(self) -> str:
        counts = ", ".join(f"{self.total(key)} {label.lower()}" for key, label, _, _ in SERIES)
        return f"{self.server.name}, {self.period.label.lower()}: {counts}"

    def svg(self) -> SafeString:
        """Stacked bars, one per hour or day, scaled to the busiest bucket; titled for readers."""
        peak = max((sum(b.values()) for b in self.buckets), default=0) or 1
        step = WIDTH / len(self.buckets)
        bars = []
        for i, bucket in enumerate(self.buckets):
            y = float(HEIGHT)
            for key, label, colour, _ in SERIES:
                if not bucket[key]:
                    continue
                h = bucket[key] / peak * (HEIGHT - 2)
                y -= h
                bars.append(
                    f'<rect x="{i * step + 1:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" '
                    f'height="{h:.1f}" fill="{colour}"><title>{bucket[key]} {label.lower()}'
                    "</title></rect>"
                )
        summary = escape(self.summary)
        return mark_safe(  # noqa: S308 - numbers and escaped text only
            f'<svg class="traffic" role="img" aria-label="{summary}" viewBox="0 0 {WIDTH} '
            f'{HEIGHT}" width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
            f"<title>{summary}</title>"
            f'<line x1="0" y1="{HEIGHT - 0.5}" x2="{WIDTH}" y2="{HEIGHT - 0.5}" stroke="#d1d9e0"/>'
            + "".join(bars)
            + "</svg>"
        )


def traffic(
    servers: list[MailServer], *, now: dt.datetime | None = None
) -> dict[int, dict[str, Chart]]:
    """Per server id, per period key: its chart. One grouped query per period (counts per server,
    outcome and hour / day), so its cost does not grow with the number of messages shown."""
    now = timezone.localtime(now or timezone.now(), dt.UTC)
    charts: dict[int, dict[str, Chart]] = {}
    outcome_series: dict[str, str] = {
        str(o): key for key, _, _, outcomes in SERIES for o in outcomes
    }
    for period in PERIODS:
        start = period.first_bucket(now)
        for server in servers:
            empty = [{key: 0 for key, *_ in SERIES} for _ in range(period.buckets)]
            charts.setdefault(server.pk, {})[period.key] = Chart(server, period, empty)
        rows = (
            DeliveryAttempt.objects.filter(started_at__gte=start, started_at__lte=now)
            .annotate(bucket=period.trunc("started_at", tzinfo=dt.UTC))
            .values("server_id", "outcome", "bucket")
            .annotate(n=Count("id"))
            .order_by()
        )
        for row in rows:
            chart = charts.get(row["server_id"], {}).get(period.key)
            series = outcome_series.get(row["outcome"])
            if chart is None or series is None:
                continue
            index = int((row["bucket"] - start) / period.size)
            if 0 <= index < period.buckets:
                chart.buckets[index][series] += row["n"]
    return charts
