"""Log lines for operators: plain text, or one JSON object per line (MAILGATE_LOG_FORMAT=json).

A JSON line has `time` (UTC, ISO 8601), `level`, `logger`, `message`, and `server` / `message_id`
when the caller passed them (`log.info(..., extra={"server": name})`), plus `exception` with the
traceback. Secrets never reach a log line: they are not logged in the first place (values are
Sealed objects that print as a mask), and as a second line of defence a bearer token, a password
parameter or a Basic credential that slipped into a message is masked here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Any

# Values that must never be written, whatever logged them.
_SECRETS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1***"),
    (re.compile(r"(?i)(basic\s+)[A-Za-z0-9+/=]{8,}"), r"\1***"),
    (
        re.compile(
            r"(?i)\b(password|client_secret|refresh_token|access_token|code_verifier)=[^&\s]+"
        ),
        r"\1=***",
    ),
    (re.compile(r"\bauth=Bearer [^\x01\s]+"), "auth=Bearer ***"),
]
CONTEXT_FIELDS = ("server", "message_id")


def redact(text: str) -> str:
    """`text` with anything shaped like a credential masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                line[name] = str(value)
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """Django's LOGGING for the chosen format and level."""
    formatter = (
        "mailgate.logs.JSONFormatter" if log_format == "json" else "mailgate.logs.PlainFormatter"
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"mailgate": {"()": formatter}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "mailgate"}},
        "loggers": {
            "mailgate": {"handlers": ["console"], "level": level, "propagate": False},
            "django": {"handlers": ["console"], "level": "WARNING", "propagate": False},
            "waitress": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        },
    }
