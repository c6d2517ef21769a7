"""The outbox: every message an application hands over, its delivery attempts, and per-server send state."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from mailgate.servers.models import MailServer


class Status(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    DEFERRED = "deferred", "Deferred"
    HELD = "held", "Held"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# Messages a worker may pick up (when due); "sending" ones too once their claim lease has expired.
WAITING = (Status.QUEUED, Status.DEFERRED)
FINAL = (Status.SENT, Status.FAILED, Status.CANCELLED)


class OutgoingMessage(models.Model):
    # No index of its own: outbox_server_due_idx starts with server_id and serves every query on it.
    server = models.ForeignKey(
        MailServer, on_delete=models.PROTECT, related_name="outgoing_messages", db_index=False
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    source = models.CharField(max_length=20, default="python")
    # Who queued it, for the callers that may read only their own messages ("apikey:<id>").
    submitted_by = models.CharField(max_length=100, blank=True)

    from_address = models.CharField(max_length=320)
    to = models.JSONField(default=list)
    cc = models.JSONField(default=list)
    bcc = models.JSONField(default=list)
    reply_to = models.CharField(max_length=998, blank=True)
    subject = models.CharField(max_length=998, blank=True)
    message_id = models.CharField(max_length=998)
    raw = models.BinaryField(help_text="The RFC 5322 message as built at enqueue time (no Bcc).")
    size = models.PositiveIntegerField(default=0)
    recipients_count = models.PositiveIntegerField(default=0)

    attempts = models.PositiveIntegerField(default=0)
    retries = models.PositiveIntegerField(
        default=0, help_text="Deferrals so far: the exponent of the back-off."
    )
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)

    last_error = models.TextField(blank=True)
    last_reply = models.TextField(blank=True)
    diagnosis = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    queue_id = models.CharField(max_length=255, blank=True)

    pending_recipients = models.JSONField(
        null=True,
        blank=True,
        help_text="Recipients still to deliver after some were refused for now (4xx); null = all.",
    )
    # NULL, not "": no key; unique among the rows that have one (outbox_idempotency_key_uniq).
    idempotency_key = models.CharField(max_length=400, null=True, blank=True)  # noqa: DJ001
    # SHA-256 of the request that used the key (submit.request_fingerprint): a retry must match it.
    # NULL: no key, or queued before fingerprints were kept (such a key accepts any retry).
    idempotency_fingerprint = models.CharField(  # noqa: DJ001
        max_length=64, null=True, blank=True
    )
    # Which rule chose the server (routing.route): shown with the message so a surprise is explained.
    route_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    # When retention emptied `raw` (the body and attachments); the rest of the row stays.
    purged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # Every index costs each message's writes (the status change of a delivery is a non-HOT
        # update on PostgreSQL), so only those a query needs. The CharField ones are declared here
        # rather than with db_index/unique on the field, which on PostgreSQL would add a second,
        # varchar_pattern_ops index for LIKE queries that nothing runs.
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="outbox_due_idx"),
            # A claim reads the oldest due messages of one server in order from this index alone,
            # however many sent messages the table holds.
            models.Index(
                fields=["server", "status", "next_attempt_at"], name="outbox_server_due_idx"
            ),
            models.Index(fields=["message_id"], name="outbox_message_id_idx"),
        ]
        constraints = [
            # Only rows with a key are in the index: most messages have none.
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="outbox_idempotency_key_uniq",
            ),
        ]

    # Not stored: True on the message enqueue() returns for a retry with an idempotency key.
    idempotent_replay = False

    def __str__(self) -> str:
        return f"#{self.pk} {self.message_id}"

    @property
    def envelope_recipients(self) -> list[str]:
        """Everyone the next attempt goes to: all recipients, or those a 4xx left undelivered."""
        if self.pending_recipients is not None:
            return list(self.pending_recipients)
        return [*self.to, *self.cc, *self.bcc]

    @property
    def raw_bytes(self) -> bytes:
        return bytes(self.raw)

    @property
    def can_retry(self) -> bool:
        return self.purged_at is None and self.status in (
            Status.FAILED,
            Status.CANCELLED,
            Status.DEFERRED,
        )

    @property
    def can_cancel(self) -> bool:
        return self.status in (Status.QUEUED, Status.DEFERRED, Status.HELD)


class Outcome(models.TextChoices):
    SENT = "sent", "Sent"
    DEFERRED = "deferred", "Deferred"
    THROTTLED = "throttled", "Throttled"
    HELD = "held", "Held"
    FAILED = "failed", "Failed"


class DeliveryAttempt(models.Model):
    message = models.ForeignKey(
        OutgoingMessage, on_delete=models.CASCADE, related_name="attempt_log"
    )
    # No index of its own: attempt_server_time_idx starts with server_id.
    server = models.ForeignKey(
        MailServer, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    started_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField(default=0)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    step = models.CharField(max_length=20, blank=True)
    reply_code = models.PositiveIntegerField(null=True, blank=True)
    reply = models.TextField(blank=True)
    error = models.TextField(blank=True)
    recipients = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["started_at", "id"]
        indexes = [models.Index(fields=["server", "started_at"], name="attempt_server_time_idx")]

    def __str__(self) -> str:
        return f"{self.started_at:%Y-%m-%d %H:%M:%S} {self.outcome} {self.reply}"


class ServerState(models.Model):
    """Per-server send state shared by every worker; its row is the lock that serializes claims."""

    server = models.OneToOneField(
        MailServer, on_delete=models.CASCADE, primary_key=True, related_name="outbox_state"
    )
    next_allowed_at = models.DateTimeField(null=True, blank=True)
    throttle_reason = models.TextField(blank=True)
    last_probe_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"state of server #{self.server_id}"


class ConnectionLease(models.Model):
    """One open SMTP connection of one worker to one server; counts against limit_connections."""

    server = models.ForeignKey(MailServer, on_delete=models.CASCADE, related_name="+")
    holder = models.CharField(max_length=200)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["server", "expires_at"], name="lease_server_idx")]

    def __str__(self) -> str:
        return f"{self.holder} on server #{self.server_id} until {self.expires_at}"
