"""What every provider plugin declares: endpoints come from settings, the rest from here."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MailDefaults:
    smtp_host: str
    smtp_port: int
    smtp_security: str
    imap_host: str
    imap_port: int
    pop3_host: str
    pop3_port: int
    incoming_security: str = "ssl"


@dataclass(frozen=True)
class Limits:
    """Per-mailbox sending limits the provider documents."""

    per_minute: int
    recipients_per_day: int
    connections: int
    max_message_bytes: int


@dataclass(frozen=True)
class Provider:
    key: str
    label: str
    auth_method: str
    connect_label: str
    defaults: MailDefaults
    limits: Limits
    callback_path: str
    clouds: dict[str, MailDefaults] = field(default_factory=dict)
