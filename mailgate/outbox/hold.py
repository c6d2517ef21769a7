"""Holding a server's queue for an account problem, and releasing it once the server is fixed."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from mailgate import providers
from mailgate.oauth.models import Grant
from mailgate.outbox.models import WAITING, OutgoingMessage, ServerState, Status
from mailgate.outbox.routing import forget_servers
from mailgate.outbox.wakeup import announce
from mailgate.servers.models import MailServer, ServerStatus

log = logging.getLogger("mailgate.outbox")


# A held server never shows a healthy status: "Token Valid" / "Ready" become "Failing" with the
# hold's reason (Reconnect required and the others already say why) until it is released.
HEALTHY = (ServerStatus.TOKEN_VALID, ServerStatus.READY)


def hold_server(server: MailServer, reason: str) -> int:
    """Mark the server held with the reason and hold its waiting messages; return how many are
    held now (those just recorded as held by the worker included)."""
    now = timezone.now()
    with transaction.atomic():
        MailServer.objects.filter(pk=server.pk).update(hold_reason=reason, held_at=now)
        MailServer.objects.filter(pk=server.pk, status__in=HEALTHY).update(
            status=ServerStatus.FAILING, status_detail=reason
        )
        OutgoingMessage.objects.filter(server=server, status__in=WAITING).update(
            status=Status.HELD, diagnosis=reason, updated_at=now
        )
        count = OutgoingMessage.objects.filter(server=server, status=Status.HELD).count()
    server.hold_reason, server.held_at = reason, now
    server.refresh_from_db(fields=["status", "status_detail"])
    forget_servers()
    log.warning(
        "server %s held: %s (%d messages held)",
        server.name,
        reason,
        count,
        extra={"server": server.name},
    )
    return count


def release_server(server: MailServer) -> int:
    """Clear the server's hold and queue its held messages for sending now; return how many.

    Called after a successful connect, a replaced secret or a passing connection test, and by the
    worker's own periodic check of held servers.
    """
    now = timezone.now()
    with transaction.atomic():
        held = MailServer.objects.filter(pk=server.pk).values_list("hold_reason", flat=True).first()
        # The status the hold set goes back to healthy (a status set since then stays).
        MailServer.objects.filter(
            pk=server.pk, status=ServerStatus.FAILING, status_detail=held or ""
        ).exclude(status_detail="").update(
            status=ServerStatus.TOKEN_VALID if server.is_oauth else ServerStatus.READY,
            status_detail="",
        )
        MailServer.objects.filter(pk=server.pk).update(hold_reason="", held_at=None)
        ServerState.objects.filter(server=server).update(
            next_allowed_at=None, throttle_reason="", last_probe_at=None
        )
        count = OutgoingMessage.objects.filter(server=server, status=Status.HELD).update(
            status=Status.QUEUED, next_attempt_at=now, diagnosis="", updated_at=now
        )
    server.hold_reason, server.held_at = "", None
    server.refresh_from_db(fields=["status", "status_detail"])
    forget_servers()
    if count:
        announce()
    if count:
        log.info(
            "server %s released: %d held messages queued again",
            server.name,
            count,
            extra={"server": server.name},
        )
    return count


def hold_step() -> bool:
    """Worker step: mark held the waiting mail of held servers. Another process may queue mail
    for a server up to routing.CACHE_SECONDS after it was held (its server list was read before);
    such mail is never sent while the hold lasts, and is counted held from here on. True when
    any was found (one small query when no server is held)."""
    found = 0
    for server_id in held_servers().values_list("pk", flat=True):
        with transaction.atomic():
            # The server row's lock orders this after (or before) a release_server(), which
            # updates that row first: mail is never marked held for a server just released.
            server = (
                MailServer.objects.select_for_update()
                .filter(pk=server_id)
                .exclude(not_held())
                .only("hold_reason")
                .first()
            )
            if server is not None:
                found += OutgoingMessage.objects.filter(
                    server_id=server_id, status__in=WAITING
                ).update(
                    status=Status.HELD, diagnosis=server.hold_reason, updated_at=timezone.now()
                )
    if found:
        log.info("%d messages queued for held servers recorded as held", found)
    return bool(found)


# A server is held while it has a hold reason or a hold time: hold_server() sets both,
# release_server() clears both, and the three functions below are the only ones that decide it.


def is_held(server: MailServer) -> bool:
    """Whether the server's outgoing mail is held."""
    return bool(server.hold_reason or server.held_at)


def not_held(prefix: str = "") -> Q:
    """The servers whose mail is not held; `prefix` reaches the server from another model
    ("server__" for messages), so the worker's query stays one join."""
    return Q(**{f"{prefix}held_at__isnull": True, f"{prefix}hold_reason": ""})


def held_servers() -> QuerySet[MailServer]:
    """Every server whose outgoing mail is held."""
    return MailServer.objects.exclude(not_held())


def connect_first(server: MailServer) -> str:
    """The hold reason for an OAuth server whose account was never connected ("" otherwise).

    Such a server cannot authenticate, so its mail waits held (like a revoked grant) instead of
    being retried against its host; connecting the account releases it (`mail_may_flow`).
    """
    if not server.provider_key or server.status != ServerStatus.NOT_CONNECTED:
        return ""  # the status is the cheap test; the grant row settles it
    if Grant.objects.filter(server_id=server.pk).exists():
        return ""
    label = providers.get(server.provider_key).connect_label
    mailbox = f" as {server.username}" if server.username else ""
    return (
        f"connect your account: {server.name} has no connected account yet. "
        f"Fix: press {label} on the server's page and sign in{mailbox}."
    )
