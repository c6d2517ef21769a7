"""Who uses the relay: each key that may send, with its last message through the relay and how
many it sent today; and what an application must be told to reach the relay."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Max
from django.utils import timezone

from mailgate.conf import RelayConfig
from mailgate.keys.models import APIKey
from mailgate.outbox.models import OutgoingMessage

SOURCE = "smtp"


@dataclass(frozen=True)
class RelayClient:
    key: APIKey
    last_message_at: dt.datetime | None
    messages_today: int


@dataclass(frozen=True)
class Endpoint:
    """One way to reach the relay, as an application's outgoing mail settings ask for it."""

    host: str
    port: int
    security: str  # "STARTTLS" or "SSL/TLS"


def relay_clients() -> list[RelayClient]:
    """Active keys that may send, busiest relay users first (then by name)."""
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    relayed = OutgoingMessage.objects.filter(source=SOURCE)
    last = dict(
        relayed.values("submitted_by")
        .annotate(at=Max("created_at"))
        .values_list("submitted_by", "at")
    )
    counts = dict(
        relayed.filter(created_at__gte=today)
        .values("submitted_by")
        .annotate(n=Count("id"))
        .values_list("submitted_by", "n")
    )
    keys = [k for k in APIKey.objects.filter(revoked_at__isnull=True) if k.allows("send")]
    rows = [RelayClient(k, last.get(k.owner_tag), counts.get(k.owner_tag, 0)) for k in keys]
    return sorted(rows, key=lambda r: (-r.messages_today, r.key.name))


def endpoints(config: RelayConfig | None, public_host: str) -> list[Endpoint]:
    """The relay's listeners as applications reach them: a wildcard address is the public host."""
    found = []
    for listen, security in (
        (config.listen if config else None, "STARTTLS"),
        (config.listen_tls if config else None, "SSL/TLS"),
    ):
        if listen is None:
            continue
        host = public_host if listen[0] in ("0.0.0.0", "::", "") else listen[0]
        found.append(Endpoint(host, listen[1], security))
    return found
