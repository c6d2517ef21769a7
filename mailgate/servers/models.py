"""A mail server: one mailbox, how mailgate authenticates to it, and where its mail goes in and out."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from mailgate import providers
from mailgate.crypto import EncryptedField
from mailgate.providers.base import Limits, MailDefaults


@dataclass(frozen=True)
class AuthMethodInfo:
    label: str
    provider: str | None  # key in mailgate.providers.REGISTRY, None for non-OAuth methods


# Authenticate Using: the labels are part of the console's contract: tests and users find fields by them.
AUTH_METHODS: dict[str, AuthMethodInfo] = {
    "password": AuthMethodInfo("Username and Password", None),
    "outlook": AuthMethodInfo("Outlook OAuth Authentication", "microsoft"),
    "gmail": AuthMethodInfo("Gmail OAuth Authentication", "google"),
    "certificate": AuthMethodInfo("TLS Certificate", None),
}
AUTH_CHOICES = [(key, info.label) for key, info in AUTH_METHODS.items()]

SECURITY_CHOICES = [
    ("starttls", "TLS (STARTTLS)"),
    ("ssl", "SSL/TLS"),
    ("none", "None"),
]
INCOMING_CHOICES = [("none", "None"), ("imap", "IMAP"), ("pop3", "POP3")]
INCOMING_SECURITY_CHOICES = [("ssl", "SSL/TLS"), ("starttls", "TLS (STARTTLS)")]
# After Fetch: what mailgate tells the server once a message is stored (POP3: keep or delete).
AFTER_FETCH_CHOICES = [
    ("keep", "Keep"),
    ("mark_read", "Mark as read"),
    ("move", "Move to folder"),
    ("delete", "Delete"),
]
DEFAULT_POLL_INTERVAL = 60
CLOUD_CHOICES = [
    ("global", "Global (Microsoft 365 / Outlook.com)"),
    ("usgov", "US Government"),
    ("china", "China (21Vianet)"),
]

# Password / certificate servers (a company's own relay, a hosting provider): no rate limit unless the
# administrator sets one (0 = none); provider servers get their documented limits instead.
GENERIC_LIMITS = Limits(
    per_minute=0, recipients_per_day=0, connections=3, max_message_bytes=25 * 1024 * 1024
)
NO_LIMIT_HELP = "0 = no limit."


class ServerStatus(models.TextChoices):
    NOT_CONNECTED = "not_connected", "Not connected"
    TOKEN_VALID = "token_valid", "Token Valid"
    RECONNECT_REQUIRED = "reconnect_required", "Reconnect required"
    READY = "ready", "Ready"
    FAILING = "failing", "Failing"


class MailServer(models.Model):
    name = models.CharField("Mail Server Description", max_length=200, unique=True)
    auth_method = models.CharField(
        "Authenticate Using", max_length=20, choices=AUTH_CHOICES, default="password"
    )
    username = models.CharField("Username", max_length=320, blank=True)
    password = EncryptedField("Password")
    client_id = models.CharField("Client ID", max_length=200, blank=True)
    client_secret = EncryptedField("Client Secret")
    client_secret_expires_on = models.DateField("Client Secret Expires On", null=True, blank=True)
    tenant = models.CharField("Tenant", max_length=255, blank=True)
    cloud = models.CharField(
        "National Cloud", max_length=10, choices=CLOUD_CHOICES, default="global"
    )
    certificate = models.TextField("Certificate", blank=True)
    private_key = EncryptedField("Private Key")

    smtp_host = models.CharField("SMTP Server", max_length=255, blank=True)
    smtp_port = models.PositiveIntegerField(
        "SMTP Port", default=587, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    smtp_security = models.CharField(
        "Connection Security", max_length=10, choices=SECURITY_CHOICES, default="starttls"
    )
    from_filter = models.CharField("From Filter", max_length=1000, blank=True)
    send_as = models.CharField("Send As Addresses", max_length=2000, blank=True)
    priority = models.IntegerField("Priority", default=10)
    active = models.BooleanField("Active", default=True)

    incoming_protocol = models.CharField(
        "Incoming Mail", max_length=10, choices=INCOMING_CHOICES, default="none"
    )
    incoming_host = models.CharField("Incoming Server", max_length=255, blank=True)
    incoming_port = models.PositiveIntegerField(
        "Incoming Port",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
    )
    incoming_security = models.CharField(
        "Incoming Security", max_length=10, choices=INCOMING_SECURITY_CHOICES, default="ssl"
    )
    incoming_folders = models.TextField(
        "Folders", default="INBOX", blank=True, help_text="IMAP folders to fetch from, one a line."
    )
    poll_interval = models.PositiveIntegerField(
        "Poll Interval",
        default=DEFAULT_POLL_INTERVAL,
        validators=[MinValueValidator(1)],
        help_text="Seconds between two fetches.",
    )
    fetch_existing = models.BooleanField(
        "Fetch Existing Mail",
        default=False,
        help_text="Off: only mail that arrives after the server is set up. "
        "On: everything already in the folders too.",
    )
    idle = models.BooleanField(
        "Instant Arrival (IDLE)",
        default=False,
        help_text="IMAP: hold an IDLE connection so new mail is fetched within seconds, "
        "not at the next Poll Interval.",
    )
    after_fetch = models.CharField(
        "After Fetch", max_length=10, choices=AFTER_FETCH_CHOICES, default="keep"
    )
    move_to_folder = models.CharField("Move To Folder", max_length=255, blank=True)
    webhook_url = models.CharField("Webhook URL", max_length=2000, blank=True)
    webhook_secret = EncryptedField("Webhook Signing Secret")

    limit_per_minute = models.PositiveIntegerField(
        "Messages per Minute", default=0, help_text=NO_LIMIT_HELP
    )
    limit_recipients_per_day = models.PositiveIntegerField(
        "Recipients per Day", default=0, help_text=NO_LIMIT_HELP
    )
    limit_connections = models.PositiveIntegerField("Concurrent Connections", default=3)
    max_message_bytes = models.PositiveIntegerField(
        "Maximum Message Size (bytes)", default=25 * 1024 * 1024
    )

    status = models.CharField(
        max_length=20, choices=ServerStatus.choices, default=ServerStatus.NOT_CONNECTED
    )
    status_detail = models.TextField(blank=True)
    hold_reason = models.TextField(
        blank=True, help_text="Set while the outgoing queue is held for an account problem."
    )
    held_at = models.DateTimeField(null=True, blank=True)
    last_test_at = models.DateTimeField(null=True, blank=True)
    last_test_ok = models.BooleanField(null=True)
    last_test_summary = models.TextField(blank=True)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def auth_label(self) -> str:
        return AUTH_METHODS[self.auth_method].label

    @property
    def provider_key(self) -> str | None:
        return AUTH_METHODS[self.auth_method].provider

    @property
    def is_oauth(self) -> bool:
        return self.provider_key is not None

    @property
    def has_incoming(self) -> bool:
        return self.incoming_protocol != "none"

    def folder_list(self) -> list[str]:
        """The IMAP folders to fetch, in the order given (INBOX when none)."""
        return split_folders(self.incoming_folders) or ["INBOX"]

    @property
    def has_outgoing(self) -> bool:
        return bool(self.smtp_host)

    @property
    def redirect_url(self) -> str:
        if not self.provider_key:
            return ""
        return settings.MAILGATE_PUBLIC_URL + providers.get(self.provider_key).callback_path

    def from_filter_entries(self) -> list[str]:
        return split_addresses(self.from_filter)

    def send_as_entries(self) -> list[str]:
        return split_addresses(self.send_as)


def split_addresses(value: str) -> list[str]:
    """Entries of a comma/semicolon/whitespace separated list, lower-cased."""
    return [
        e.strip().lower()
        for e in value.replace(";", ",").replace("\n", ",").split(",")
        if e.strip()
    ]


def split_folders(value: str) -> list[str]:
    """Folder names, one a line (or comma separated), without duplicates; names keep their case."""
    seen: list[str] = []
    for line in value.replace(",", "\n").splitlines():
        name = line.strip()
        if name and name not in seen:
            seen.append(name)
    return seen


def mail_defaults(auth_method: str, cloud: str = "global") -> MailDefaults | None:
    """Server defaults for an Authenticate Using value (None for methods without defaults)."""
    key = AUTH_METHODS[auth_method].provider
    if key is None:
        return None
    provider = providers.get(key)
    return provider.clouds.get(cloud, provider.defaults)


def default_limits(auth_method: str) -> Limits:
    key = AUTH_METHODS[auth_method].provider
    return providers.get(key).limits if key else GENERIC_LIMITS
