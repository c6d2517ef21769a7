"""Handing stored messages to the application: the `message_received` signal in this process,
then the server's webhook (signed POST of the message's JSON). A failure is retried with back-off;
a message that keeps failing goes to Quarantine. A failing endpoint never holds up fetching."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Q
from django.utils import timezone

from mailgate.conf import parse_int
from mailgate.crypto import Sealed
from mailgate.inbox.models import IncomingMessage, Status, WebhookDelivery
from mailgate.inbox.signals import message_received
from mailgate.inbox.store import ensure_parsed, parse_pending

log = logging.getLogger("mailgate.inbox")

MAX_ATTEMPTS = parse_int(
    "MAILGATE_INBOX_HANDOFF_ATTEMPTS",
    os.environ.get("MAILGATE_INBOX_HANDOFF_ATTEMPTS", ""),
    5,
    1,
    1000,
)
BACKOFF_SECONDS = (10, 60, 300, 1800, 3600)
WEBHOOK_TIMEOUT = 10.0
HANDOFF_BATCH = 100


def message_json(message: IncomingMessage) -> dict[str, Any]:
    """A message as the REST list and the webhook show it."""
    ensure_parsed(message)
    return {
        "id": message.pk,
        "server": message.server.name,
        "folder": message.folder,
        "message_id": message.message_id,
        "from": message.sender,
        "to": message.to,
        "cc": message.cc,
        "subject": message.subject,
        "date": message.date,
        "received_at": message.received_at,
        "size": message.size,
        "attachments": message.attachments,
        "status": message.status,
    }


def signature(secret: str, body: bytes) -> str:
    """`X-Mailgate-Signature`: sha256=<hex HMAC-SHA256 of the body with the signing secret>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _run_receivers(message: IncomingMessage) -> str:
    """Send `message_received`; the first receiver error as text ('' when all succeeded)."""
    for receiver, result in message_received.send_robust(sender=IncomingMessage, message=message):
        if isinstance(result, Exception):
            name = getattr(receiver, "__qualname__", repr(receiver))
            return f"handler {name} failed: {type(result).__name__}: {result}"
    return ""


def post_webhook(message: IncomingMessage, client: httpx.Client) -> str:
    """POST the message's JSON to its server's webhook; the error as text ('' on a 2xx)."""
    server = message.server
    body = json.dumps(message_json(message), cls=DjangoJSONEncoder).encode()
    delivery_id = str(uuid.uuid4())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "mailgate",
        "X-Mailgate-Delivery": delivery_id,
        "X-Mailgate-Event": "message_received",
    }
    secret = server.webhook_secret
    if isinstance(secret, Sealed) and secret.reveal():
        headers["X-Mailgate-Signature"] = signature(secret.reveal(), body)
    started = time.monotonic()
    log_row = WebhookDelivery(message=message, delivery_id=delivery_id, url=server.webhook_url)
    try:
        response = client.post(server.webhook_url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        log_row.error = f"{type(exc).__name__}: {exc}"[:2000] or type(exc).__name__
    else:
        log_row.status_code = response.status_code
        log_row.ok = response.is_success
        if not response.is_success:
            log_row.error = f"HTTP {response.status_code}: {response.text[:300]}"
    log_row.duration_ms = int((time.monotonic() - started) * 1000)
    log_row.save()
    return "" if log_row.ok else f"webhook {server.webhook_url}: {log_row.error}"


def hand_off_one(message: IncomingMessage, client: httpx.Client) -> bool:
    """One hand-off attempt; True when the message is delivered."""
    error = ""
    ensure_parsed(message)
    if not message.handler_done:
        error = _run_receivers(message)
        if not error:
            message.handler_done = True
    if not error and not message.webhook_done:
        if message.server.webhook_url:
            error = post_webhook(message, client)
        if not error:
            message.webhook_done = True
    now = timezone.now()
    if error:
        message.attempts += 1
        message.last_error = error[:2000]
        if message.attempts >= MAX_ATTEMPTS:
            message.status = Status.QUARANTINED
            message.next_attempt_at = None
            log.warning("message %s quarantined: %s", message.pk, error)
        else:
            pause = BACKOFF_SECONDS[min(message.attempts, len(BACKOFF_SECONDS)) - 1]
            message.next_attempt_at = now + timedelta(seconds=pause)
    else:
        message.status = Status.DELIVERED
        message.delivered_at = now
        message.last_error = ""
        message.next_attempt_at = None
    message.save(
        update_fields=[
            "handler_done",
            "webhook_done",
            "attempts",
            "last_error",
            "status",
            "next_attempt_at",
            "delivered_at",
        ]
    )
    return not error


def hand_off(limit: int = HANDOFF_BATCH) -> int:
    """Offer due received messages to the application, oldest first; return how many were tried.

    After a webhook failure, that server's other messages wait for the next round. Messages the
    fetch stored as bytes alone are parsed first."""
    parse_pending(rounds=10)  # 5,000 at most per step; a reader parses any other on its own
    now = timezone.now()
    due = list(
        IncomingMessage.objects.filter(status=Status.RECEIVED)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .select_related("server")
        .defer("raw")
        .order_by("seq")[:limit]
    )
    if not due:
        return 0
    failing: set[int] = set()
    tried = 0
    with httpx.Client(timeout=WEBHOOK_TIMEOUT, follow_redirects=False) as client:
        for message in due:
            if message.server_id in failing:
                continue
            tried += 1
            if not hand_off_one(message, client) and not message.webhook_done:
                failing.add(message.server_id)
    return tried


def handoff_step() -> bool:
    """Worker step: hand off the due messages."""
    return hand_off() > 0


def retry(message: IncomingMessage) -> None:
    """Console/CLI Retry: a quarantined message is offered again now, with fresh attempts."""
    message.status = Status.RECEIVED
    message.attempts = 0
    message.next_attempt_at = None
    message.save(update_fields=["status", "attempts", "next_attempt_at"])
