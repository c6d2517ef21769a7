"""Every message the sandbox SMTP server accepted: in memory, and as .eml files plus a JSON-lines index on disk.

Layout under `<state>/messages/`: `<id>.eml` (the message as received) and `index.jsonl` (one summary per
line, appended; a `{"cleared": true}` line forgets everything before it). Appending keeps each `add()`
O(1) however many messages were accepted, and the store survives a restart of the sandbox.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _queue_id(now: float) -> str:
    """A sortable, Exchange-looking queue id: 10 chars of milliseconds + 10 random chars (Crockford base32)."""
    millis = int(now * 1000)
    head = "".join(_ALPHABET[(millis >> shift) & 31] for shift in range(45, -5, -5))
    tail = "".join(secrets.choice(_ALPHABET) for _ in range(10))
    return head + tail


def _subject(data: bytes) -> str:
    try:
        raw = BytesHeaderParser().parsebytes(data).get("Subject", "")
        return str(make_header(decode_header(str(raw))))
    except (ValueError, LookupError, UnicodeError):
        return ""


class FileMailStore:
    """Thread-safe `interfaces.MailStore` kept under `<state>/messages`."""

    def __init__(self, state_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(state_dir) / "messages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index = self.dir / "index.jsonl"
        self._clock = clock
        self._lock = threading.Lock()
        self._summaries: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if not self._index.exists():
            return
        text = self._index.read_text(encoding="utf-8", errors="replace")
        if text and not text.endswith("\n"):
            # End a line torn by a crash mid-append, so that the next append starts a fresh line.
            with self._index.open("a", encoding="utf-8") as fh:
                fh.write("\n")
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                # A line cut short by a crash mid-append: everything before it is intact.
                continue
            if entry.get("cleared"):
                self._summaries.clear()
            elif isinstance(entry.get("id"), str) and (self.dir / f"{entry['id']}.eml").exists():
                self._summaries[entry["id"]] = entry

    def add(
        self, *, mail_from: str, rcpt_tos: list[str], data: bytes, authenticated_as: str
    ) -> str:
        """Store an accepted message; return its id."""
        received_at = self._clock()
        message_id = _queue_id(received_at)
        summary = {
            "id": message_id,
            "received_at": received_at,
            "mail_from": mail_from,
            "rcpt_tos": list(rcpt_tos),
            "subject": _subject(data),
            "size": len(data),
            "authenticated_as": authenticated_as,
        }
        with self._lock:
            tmp = self.dir / f".{message_id}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.dir / f"{message_id}.eml")
            with self._index.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(summary) + "\n")
            self._summaries[message_id] = summary
        return message_id

    def list(self) -> list[dict[str, Any]]:
        """Summaries, newest first."""
        with self._lock:
            items = [dict(s, rcpt_tos=list(s["rcpt_tos"])) for s in self._summaries.values()]
        items.sort(key=lambda s: (s["received_at"], s["id"]), reverse=True)
        return items

    def get(self, message_id: str) -> dict[str, Any] | None:
        """One summary plus `raw` (the message as text), or None for an unknown id."""
        with self._lock:
            summary = self._summaries.get(message_id)
            if summary is None:
                return None
            data = (self.dir / f"{message_id}.eml").read_bytes()
        return dict(
            summary, rcpt_tos=list(summary["rcpt_tos"]), raw=data.decode("utf-8", "replace")
        )

    def get_bytes(self, message_id: str) -> bytes | None:
        """The message exactly as received, or None for an unknown id."""
        with self._lock:
            if message_id not in self._summaries:
                return None
            return (self.dir / f"{message_id}.eml").read_bytes()

    def clear(self) -> None:
        with self._lock:
            for message_id in self._summaries:
                (self.dir / f"{message_id}.eml").unlink(missing_ok=True)
            self._summaries.clear()
            with self._index.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"cleared": True}) + "\n")
