"""Outbox tuning, from Django settings or the environment (strictly parsed, like mailgate.conf)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from django.conf import settings

from mailgate.conf import _bool as parse_bool
from mailgate.conf import tuning_number

# name: (default, minimum, meaning)
KNOBS: dict[str, tuple[float, float, str]] = {
    "MAILGATE_OUTBOX_MAX_AGE": (2 * 86400, 60, "seconds a message may stay undelivered"),
    "MAILGATE_OUTBOX_LEASE_SECONDS": (300, 1, "seconds a worker's claim lasts without renewal"),
    "MAILGATE_OUTBOX_BATCH_SIZE": (200, 1, "messages claimed per server per batch"),
    "MAILGATE_OUTBOX_BATCH_BYTES": (
        32 * 1024 * 1024,
        1,
        "bytes of messages claimed per batch at most (a larger message goes alone)",
    ),
    "MAILGATE_OUTBOX_GATHER_SECONDS": (
        0.02,
        0,
        "seconds a worker waits, after a pass that emptied the queue while mail keeps coming, "
        "before claiming again, so that one claim takes several messages (0: no wait)",
    ),
    "MAILGATE_OUTBOX_PROBE_SECONDS": (300, 1, "seconds between checks of a held server"),
    "MAILGATE_OUTBOX_BACKOFF_BASE": (60, 0.01, "seconds before the first retry"),
    "MAILGATE_OUTBOX_BACKOFF_MAX": (3600, 0.01, "longest pause between retries, in seconds"),
    "MAILGATE_OUTBOX_SMTP_TIMEOUT": (30, 0.1, "seconds to wait for an SMTP server"),
    "MAILGATE_OUTBOX_WORKER_CONNECTIONS": (
        4,
        1,
        "connections one worker process sends over side by side, at most (each server's "
        "Concurrent Connections still holds across all workers)",
    ),
    "MAILGATE_RETENTION_DAYS": (
        30,
        0,
        "days the bodies of sent, failed and cancelled messages are kept (0: forever)",
    ),
}


# name: (default, meaning); values 1/0, true/false, yes/no, on/off.
SWITCHES: dict[str, tuple[bool, str]] = {
    "MAILGATE_OUTBOX_SMTP_PIPELINING": (
        True,
        "send MAIL FROM, RCPT TO and DATA together when the server offers PIPELINING",
    ),
    "MAILGATE_OUTBOX_SMTP_CHUNKING": (
        True,
        "send message content with BDAT when the server offers CHUNKING (and PIPELINING)",
    ),
}


@dataclass(frozen=True)
class OutboxConfig:
    max_age: float
    lease_seconds: float
    batch_size: int
    batch_bytes: int
    probe_seconds: float
    backoff_base: float
    backoff_max: float
    smtp_timeout: float
    worker_connections: int = 4
    smtp_pipelining: bool = True
    smtp_chunking: bool = True
    retention_days: float = 30
    gather_seconds: float = 0.02


def _value(name: str) -> float:
    return tuning_number(name, *KNOBS[name])


def _switch(name: str) -> bool:
    default, _meaning = SWITCHES[name]
    raw = getattr(settings, name, None)
    if raw is None:
        raw = os.environ.get(name, "").strip()
        if not raw:
            return default
    if isinstance(raw, bool):
        return raw
    return parse_bool(name, str(raw))


def get() -> OutboxConfig:
    """The current values (read each time so that tests can override settings)."""
    return OutboxConfig(
        max_age=_value("MAILGATE_OUTBOX_MAX_AGE"),
        lease_seconds=_value("MAILGATE_OUTBOX_LEASE_SECONDS"),
        batch_size=int(_value("MAILGATE_OUTBOX_BATCH_SIZE")),
        batch_bytes=int(_value("MAILGATE_OUTBOX_BATCH_BYTES")),
        probe_seconds=_value("MAILGATE_OUTBOX_PROBE_SECONDS"),
        backoff_base=_value("MAILGATE_OUTBOX_BACKOFF_BASE"),
        backoff_max=_value("MAILGATE_OUTBOX_BACKOFF_MAX"),
        smtp_timeout=_value("MAILGATE_OUTBOX_SMTP_TIMEOUT"),
        worker_connections=int(_value("MAILGATE_OUTBOX_WORKER_CONNECTIONS")),
        smtp_pipelining=_switch("MAILGATE_OUTBOX_SMTP_PIPELINING"),
        smtp_chunking=_switch("MAILGATE_OUTBOX_SMTP_CHUNKING"),
        retention_days=_value("MAILGATE_RETENTION_DAYS"),
        gather_seconds=_value("MAILGATE_OUTBOX_GATHER_SECONDS"),
    )
