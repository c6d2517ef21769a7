"""Transport plugins: one module each, registered in REGISTRY by name."""

from __future__ import annotations

from mailgate.transports.base import Envelope, Reply, SendResult, Transport, TransportError
from mailgate.transports.imap import IMAPTransport
from mailgate.transports.pop3 import POP3Transport
from mailgate.transports.smtp import SMTPTransport

REGISTRY: dict[str, type[Transport]] = {
    "smtp": SMTPTransport,
    "imap": IMAPTransport,
    "pop3": POP3Transport,
}

__all__ = ["REGISTRY", "Envelope", "Reply", "SendResult", "Transport", "TransportError"]
