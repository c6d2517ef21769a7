"""What every transport plugin offers: a small open/close/`with` lifecycle and one error type."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from mailgate.conf import is_loopback_host
from mailgate.providers.replies import diagnose_reply
from mailgate.transports.credentials import (
    BearerToken,
    ClientCertificate,
    Credential,
    Endpoint,
    Password,
)

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


class Sink(Protocol):
    """Where a fetched message is streamed (a file, or a wrapper that hashes as it writes)."""

    def write(self, data: bytes, /) -> int: ...


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
    endpoint: Endpoint
    credential: Credential | None = None
    _ready = False

    def connect(self) -> object:
        raise NotImplementedError

    def starttls(self) -> object:
        raise NotImplementedError

    def authenticate(self) -> Reply:
        """Log in with the credential: a bearer token (XOAUTH2 / OAUTHBEARER) or a password; a
        client certificate needs no login unless it comes with one, nor does no credential."""
        credential = self.credential
        if isinstance(credential, ClientCertificate):
            credential = credential.login
        if isinstance(credential, BearerToken):
            require_encryption(self.endpoint, is_encrypted=self.is_encrypted, what="access token")
            sent: list[str] = []

            def first_token() -> str:
                sent.append(credential.get_token())
                return sent[-1]

            try:
                return self._auth_bearer(BearerToken(credential.username, first_token))
            except TransportError as refused:
                renew = credential.renew
                if renew is None or not sent or refused.step != "auth" or not refused.permanent:
                    raise
            # Refused for good (535 5.7.3 and the like): one newly issued token decides whether
            # the token or the account is the problem. The refused token goes along, so that a
            # token another connection has renewed meanwhile is taken instead of a second renewal.
            return self._auth_bearer(BearerToken(credential.username, lambda: renew(sent[-1])))
        if isinstance(credential, Password):
            require_encryption(self.endpoint, is_encrypted=self.is_encrypted, what="password")
            return self._auth_password(credential)
        return Reply()

    def _auth_bearer(self, credential: BearerToken) -> Reply:
        raise NotImplementedError

    def _auth_password(self, credential: Password) -> Reply:
        raise NotImplementedError

    @property
    def is_encrypted(self) -> bool:
        raise NotImplementedError

    @property
    def address(self) -> str:
        return str(self.endpoint)

    def untrusted(self, exc: ssl.SSLCertVerificationError) -> TransportError:
        """The server's certificate failed verification: say whose and how to fix it."""
        message = f"the TLS certificate of {self.address} is not trusted: {exc.verify_message}"
        explained = diagnose_reply(None, message)
        return TransportError(
            message, step="tls", diagnosis=explained.as_text() if explained else ""
        )

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


Handle = TypeVar("Handle")


class IncomingTransport(Transport, Generic[Handle]):
    """IMAP / POP3: a mailbox to read, on its implicit-TLS or plain port when none is given.

    `connection` is the protocol library's client object once connected.
    """

    implicit_tls_port = 0
    plain_port = 0

    def __init__(
        self, endpoint: Endpoint, credential: Credential | None = None, *, timeout: float = 30.0
    ) -> None:
        self.endpoint = endpoint
        self.credential = credential
        self.timeout = timeout
        self.connection: Handle | None = None
        self._ready = False

    @property
    def is_open(self) -> bool:
        return self._ready and self.connection is not None

    def close(self) -> None:
        handle, self.connection = self.connection, None
        self._ready = False
        if handle is not None:
            close_quietly(*self._goodbye(handle))

    def _goodbye(
        self, handle: Handle
    ) -> tuple[Callable[[], object], Callable[[], object], tuple[type[Exception], ...]]:
        """How to close `handle`: the polite call, the abrupt one, and the library's errors."""
        raise NotImplementedError

    def _require(self) -> Handle:
        if self.connection is None:
            raise TransportError("not connected", step="connect")
        return self.connection

    @property
    def is_encrypted(self) -> bool:
        return self.endpoint.security in ("ssl", "starttls") and self.connection is not None

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


def close_quietly(
    polite: Callable[[], object], abrupt: Callable[[], object], errors: tuple[type[Exception], ...]
) -> None:
    """Say goodbye to the server (QUIT / LOGOUT); if that fails, just close the socket."""
    expected: tuple[type[Exception], ...] = (OSError, ssl.SSLError, *errors)
    try:
        polite()
    except expected:
        with contextlib.suppress(*expected):
            abrupt()


def require_encryption(endpoint: Endpoint, *, is_encrypted: bool, what: str) -> None:
    """Refuse to send a password or a bearer token in clear text, except to a loopback host."""
    if is_encrypted or is_loopback_host(endpoint.host):
        return
    raise TransportError(
        f"refusing to send the {what} over an unencrypted connection: "
        f"set {endpoint.security_label} to SSL/TLS or TLS (STARTTLS)",
        permanent=True,
        step="auth",
    )


def tls_context(credential: Credential | None) -> ssl.SSLContext:
    """A verifying client context (system store + SSL_CERT_FILE), with the client certificate if any.

    Without a client certificate the context is shared: loading the system's trust store costs
    about 20 ms of CPU, more than a connection's TLS handshake. It is built again when
    SSL_CERT_FILE / SSL_CERT_DIR, or the trust file they name, change."""
    if isinstance(credential, ClientCertificate):
        context = _verifying_context()
        _load_client_certificate(context, credential)
        return context
    return _shared_context(*_trust_key())


def _verifying_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _trust_key() -> tuple[str, str, float]:
    paths = ssl.get_default_verify_paths()
    cafile = os.environ.get("SSL_CERT_FILE", "") or paths.cafile or ""
    try:
        stamp = os.stat(cafile).st_mtime if cafile else 0.0
    except OSError:
        stamp = 0.0
    return cafile, os.environ.get("SSL_CERT_DIR", ""), stamp


@functools.lru_cache(maxsize=4)
def _shared_context(cafile: str, capath: str, stamp: float) -> ssl.SSLContext:
    return _verifying_context()  # create_default_context reads the same environment


def _load_client_certificate(context: ssl.SSLContext, credential: ClientCertificate) -> None:
    if not credential.private_key:
        raise TransportError(
            "the TLS Certificate server has no private key: upload the key with the certificate",
            permanent=True,
            step="tls",
        )
    # load_cert_chain reads files only; the key lives on disk (0600) for the duration of the call.
    with tempfile.TemporaryDirectory(prefix="mailgate-tls-") as folder:
        cert_path = os.path.join(folder, "cert.pem")
        key_path = os.path.join(folder, "key.pem")
        for path, content in (
            (cert_path, credential.certificate),
            (key_path, credential.private_key),
        ):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(content)
        try:
            context.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, ValueError) as exc:
            raise TransportError(
                f"the client certificate or its private key cannot be loaded: {exc}",
                permanent=True,
                step="tls",
            ) from None
