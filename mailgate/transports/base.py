"""What every transport plugin offers: a small open/close/`with` lifecycle and one error type."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

# An enhanced status code (RFC 3463) at the start of a reply text: "5.7.139 Authentication ...".
ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Reply:
    """A server reply: the basic code (None when no reply was received), enhanced status and text."""

    code: int | None = None
    enhanced: str = ""
    text: str = ""

    @classmethod
    def parse(cls, code: int | None, raw: bytes | str) -> Reply:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        text = " ".join(text.split())
        match = ENHANCED_RE.match(text)
        enhanced = match.group(0) if match else ""
        if match:
            text = text[match.end() :].lstrip()
        return cls(code, enhanced, text)

    def __str__(self) -> str:
        return " ".join(str(p) for p in (self.code, self.enhanced, self.text) if p)

    @property
    def is_success(self) -> bool:
        return self.code is not None and 200 <= self.code < 300


class TransportError(Exception):
    """A delivery or connection problem; `permanent` says whether retrying the same thing can help.

    `step` names where it happened (connect, tls, auth, token, mail, rcpt, data); `reply` carries the
    server's answer when there was one; `diagnosis` is a plain explanation when one is known.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        step: str = "",
        reply: Reply | None = None,
        diagnosis: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.step = step
        self.reply = reply or Reply()
        self.diagnosis = diagnosis

    @property
    def code(self) -> int | None:
        return self.reply.code

    @property
    def enhanced(self) -> str:
        return self.reply.enhanced

    @property
    def text(self) -> str:
        return self.reply.text

    def __str__(self) -> str:
        return self.message


@dataclass
class Envelope:
    """One message to submit: the envelope sender, the recipients and the RFC 5322 bytes."""

    mail_from: str
    recipients: list[str]
    data: bytes
    ref: Any = None  # the caller's handle (e.g. the OutgoingMessage id), passed back in the result


@dataclass
class SendResult:
    """What happened to one envelope: sent (with the reply and queue ID) or an error."""

    envelope: Envelope
    reply: Reply = field(default_factory=Reply)
    queue_id: str = ""
    error: TransportError | None = None
    refused: dict[str, Reply] = field(
        default_factory=dict
    )  # recipients refused while others were accepted
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class Transport:
    """Base class: `open()` publishes a ready connection, `close()` closes only what this object opened."""

    name = ""
    endpoint: Any  # a transports.credentials.Endpoint (not imported: it imports this module)
    _ready = False

    def connect(self) -> object:
        raise NotImplementedError

    def starttls(self) -> object:
        raise NotImplementedError

    def authenticate(self) -> object:
        raise NotImplementedError

    def open(self) -> bool:
        """Connect, STARTTLS when configured, authenticate; True when a new connection was opened.

        The connection counts as open only once every step succeeded; a failure closes what was opened.
        """
        if self.is_open:
            return False
        try:
            self.connect()
            if self.endpoint.security == "starttls":
                self.starttls()
            self.authenticate()
        except BaseException:
            self.close()
            raise
        self._ready = True
        return True

    def close(self) -> None:
        raise NotImplementedError

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    def send_messages(self, envelopes: list[Envelope]) -> list[SendResult]:
        """Submit each envelope; a per-message refusal is a result, a lost connection raises TransportError."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class IncomingTransport(Transport):
    """IMAP / POP3: a mailbox to read, on its implicit-TLS or plain port when none is given."""

    implicit_tls_port = 0
    plain_port = 0

    @property
    def default_port(self) -> int:
        return self.implicit_tls_port if self.endpoint.security == "ssl" else self.plain_port

    @property
    def port(self) -> int:
        return int(self.endpoint.port or self.default_port)

    @property
    def address(self) -> str:
        return f"{self.endpoint.host}:{self.port}"

    def check_endpoint(self) -> None:
        """Refuse to connect without a host or with an unknown security setting."""
        if not self.endpoint.host:
            raise TransportError(
                "the server has no Incoming Server host name", permanent=True, step="connect"
            )
        if self.endpoint.security not in ("ssl", "starttls", "none"):
            raise TransportError(
                f"unknown {self.endpoint.security_label} {self.endpoint.security!r}",
                permanent=True,
                step="connect",
            )
