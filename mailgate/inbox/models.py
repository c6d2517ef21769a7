"""Incoming messages, the fetch cursors (per server and folder) and the per-server fetch state."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils import timezone

from mailgate.servers.models import MailServer


class Status(models.TextChoices):
    RECEIVED = "received", "Received"  # stored, waiting for the hand-off
    DELIVERED = "delivered", "Delivered"  # handed to every receiver and the webhook
    QUARANTINED = "quarantined", "Quarantine"  # the hand-off kept failing


class RemoteAction(models.TextChoices):
    NONE = "none", "Nothing to do"
    PENDING = "pending", "Pending"  # stored; the After Fetch action is not yet confirmed
    DONE = "done", "Done"


class IncomingMessage(models.Model):
    """One fetched message: its exact bytes (in `raw`, or in a file named by its SHA-256) and what
    was parsed from them (best effort: a message that does not parse is still stored)."""

    seq = models.BigIntegerField(unique=True, help_text="Arrival order; the REST cursor.")
    # No index of its own: inbox_remote_idx and the unique constraints begin with it (one b-tree
    # fewer to update for each message a fetch commits).
    server = models.ForeignKey(
        MailServer, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    folder = models.CharField(max_length=255, blank=True)
    uidvalidity = models.BigIntegerField(null=True, blank=True)
    uid = models.BigIntegerField(null=True, blank=True)
    uidl = models.CharField(max_length=255, blank=True)
    message_id = models.CharField(max_length=998, blank=True)
    sender = models.CharField(max_length=998, blank=True)
    to = models.JSONField(default=list)
    cc = models.JSONField(default=list)
    subject = models.TextField(blank=True)
    date = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    size = models.BigIntegerField()
    # Of the message's bytes; a batch's message is hashed by the parse (empty until `parsed`).
    sha256 = models.CharField(max_length=64)
    raw = models.BinaryField(null=True, blank=True)
    raw_file = models.CharField(max_length=300, blank=True)
    # Set when `raw_file` is a pack of a batch's messages: where this one starts (`size` bytes).
    raw_offset = models.BigIntegerField(null=True, blank=True)
    attachments = models.JSONField(default=list)
    parse_error = models.TextField(blank=True)
    # False until the fields above are parsed from the bytes: the fetch stores the bytes alone,
    # the hand-off (or the first reader) parses them (mailgate.inbox.store.parse_pending).
    parsed = models.BooleanField(default=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RECEIVED)
    remote_action = models.CharField(
        max_length=8, choices=RemoteAction.choices, default=RemoteAction.NONE
    )
    handler_done = models.BooleanField(default=False)
    webhook_done = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["server", "folder", "uidvalidity", "uid"],
                condition=models.Q(uid__isnull=False),
                name="inbox_unique_imap_uid",
            ),
            models.UniqueConstraint(
                fields=["server", "uidl"],
                condition=~models.Q(uidl=""),
                name="inbox_unique_pop_uidl",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="inbox_handoff_idx"),
            models.Index(fields=["server", "remote_action"], name="inbox_remote_idx"),
            models.Index(
                fields=["seq"], condition=models.Q(parsed=False), name="inbox_unparsed_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.subject[:40]!r} from {self.sender}"

    def raw_path(self) -> Path | None:
        """The file holding exactly this message's bytes (None: in the database or a pack)."""
        if not self.raw_file or self.raw_offset is not None:
            return None
        return Path(settings.MAILGATE_HOME) / self.raw_file

    def raw_bytes(self) -> bytes:
        if self.raw_file and self.raw_offset is not None:
            with (Path(settings.MAILGATE_HOME) / self.raw_file).open("rb") as fh:
                fh.seek(self.raw_offset)
                return fh.read(self.size)
        path = self.raw_path()
        if path is not None:
            return path.read_bytes()
        return bytes(self.raw or b"")


class InboxSequence(models.Model):
    """One row whose lock orders arrivals: a message's `seq` is taken and committed under it, so
    sequence numbers become visible in increasing order and a REST poller never skips one."""

    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"inbox sequence at {self.value}"


class FolderCursor(models.Model):
    """Per (server, folder): UIDVALIDITY and the highest UID taken (IMAP)."""

    server = models.ForeignKey(MailServer, on_delete=models.CASCADE, related_name="+")
    folder = models.CharField(max_length=255)
    uidvalidity = models.BigIntegerField()
    last_uid = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    resynced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["server", "folder"], name="inbox_cursor_unique")
        ]

    def __str__(self) -> str:
        return f"{self.folder} of server #{self.server_id}: {self.uidvalidity}/{self.last_uid}"


class SkippedUidl(models.Model):
    """POP3 messages that were in the mailbox when it was set up with Fetch Existing Mail off."""

    server = models.ForeignKey(MailServer, on_delete=models.CASCADE, related_name="+")
    uidl = models.CharField(max_length=255)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["server", "uidl"], name="inbox_skipped_uidl_unique")
        ]

    def __str__(self) -> str:
        return self.uidl


class FetchState(models.Model):
    """Per server: who fetches it now (the claim), when next, and how the last fetches went."""

    server = models.OneToOneField(
        MailServer, on_delete=models.CASCADE, primary_key=True, related_name="fetch_state"
    )
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    # The one worker holding this server's IDLE connection (its heartbeat's holder) and until
    # when; renewed by that worker while it idles (mailgate.inbox.idle).
    idle_by = models.CharField(max_length=200, blank=True)
    idle_until = models.DateTimeField(null=True, blank=True)
    next_fetch_at = models.DateTimeField(null=True, blank=True)
    set_up_at = models.DateTimeField(default=timezone.now)
    last_fetch_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_count = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    diagnosis = models.TextField(blank=True)
    failures = models.PositiveIntegerField(default=0)
    flagged = models.BooleanField(default=False)
    fetched_total = models.PositiveBigIntegerField(default=0)
    errors_total = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"fetch state of server #{self.server_id}"


class WebhookDelivery(models.Model):
    """One POST of a message to its server's webhook: the delivery log."""

    message = models.ForeignKey(
        IncomingMessage, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    delivery_id = models.CharField(max_length=40)
    url = models.CharField(max_length=2000)
    started_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    ok = models.BooleanField(default=False)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["started_at", "id"]

    def __str__(self) -> str:
        return f"{self.delivery_id} {self.status_code or self.error}"
