"""POP3 (poplib): implicit TLS / STLS / plain, XOAUTH2 for OAuth mailboxes, USER/PASS, client certificates.

The steps (connect, starttls, authenticate, stat) are methods so the connection test can run them
one by one. Certificate verification is always on (system store + SSL_CERT_FILE).
"""

from __future__ import annotations

import base64
import poplib
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from mailgate.transports.base import (
    IncomingTransport,
    Reply,
    Sink,
    TransportError,
    tls_context,
)
from mailgate.transports.credentials import (
    BearerToken,
    Password,
    bearer_response,
)

T = TypeVar("T")
READ_BYTES = 65536
MAX_READS = 50_000_000  # bounds one RETR


def _text(value: bytes | BaseException) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    args = getattr(value, "args", ())
    if args and isinstance(args[0], bytes):
        return str(args[0].decode("utf-8", "replace"))
    return str(value)


class POP3Transport(IncomingTransport[poplib.POP3]):
    """One POP3 connection to a server's incoming mailbox."""

    name = "pop3"
    implicit_tls_port = 995
    plain_port = 110

    def _goodbye(self, handle: poplib.POP3) -> tuple[Any, Any, tuple[type[Exception], ...]]:
        return handle.quit, handle.close, (poplib.error_proto,)

    def connect(self) -> Reply:
        """Open the connection (TLS first for implicit TLS) and read the greeting."""
        self.check_endpoint()
        host, port = self.endpoint.host, self.port
        try:
            if self.endpoint.security == "ssl":
                connection: poplib.POP3 = poplib.POP3_SSL(
                    host, port, timeout=self.timeout, context=tls_context(self.credential)
                )
            else:
                connection = poplib.POP3(host, port, timeout=self.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise self.untrusted(exc) from None
        except ssl.SSLError as exc:
            raise TransportError(f"TLS with {self.address} failed: {exc}", step="tls") from None
        except (TimeoutError, OSError, poplib.error_proto) as exc:
            raise TransportError(
                f"cannot connect to {self.address}: {_text(exc)}", step="connect"
            ) from None
        self.connection = connection
        return Reply.parse(None, connection.getwelcome())

    def starttls(self) -> Reply:
        """Upgrade with STLS, verifying the certificate and host name."""
        connection = self._require()
        try:
            text = connection.stls(tls_context(self.credential))
        except ssl.SSLCertVerificationError as exc:
            raise self.untrusted(exc) from None
        except (ssl.SSLError, OSError, poplib.error_proto) as exc:
            raise TransportError(
                f"STLS with {self.address} failed: {_text(exc)}", step="tls"
            ) from None
        return Reply.parse(None, text)

    def _auth_bearer(self, credential: BearerToken) -> Reply:
        connection = self._require()
        token = credential.get_token()
        raw: Any = connection  # poplib offers no AUTH method; its command helper is used
        response = bearer_response("XOAUTH2", credential.username, token)
        payload = base64.b64encode(response.encode()).decode()

        def authenticate() -> bytes:
            # Exchange documents the two-line form: "AUTH XOAUTH2", "+", then the response.
            # Reference: https://learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth#pop-protocol-exchange
            raw._shortcmd("AUTH XOAUTH2")
            resp: bytes = raw._shortcmd(payload)
            if not resp.startswith(b"+OK"):
                # An error challenge (base64 JSON): answer empty to receive the final -ERR.
                resp = raw._shortcmd("")
            return resp

        return self._login(authenticate)

    def _auth_password(self, credential: Password) -> Reply:
        connection = self._require()

        def authenticate() -> bytes:
            connection.user(credential.username)
            return connection.pass_(credential.password)

        return self._login(authenticate)

    def _login(self, call: Callable[[], bytes]) -> Reply:
        try:
            resp = call()
        except poplib.error_proto as exc:
            reply = Reply.parse(None, _text(exc))
            raise TransportError(
                f"authentication failed: {reply}", permanent=True, step="auth", reply=reply
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(
                f"authentication with {self.address} failed: {exc}", step="auth"
            ) from None
        return Reply.parse(None, resp)

    def stat(self) -> Reply:
        """STAT: the mailbox is open; the reply names the message count."""
        connection = self._require()
        try:
            count, size = connection.stat()
        except (poplib.error_proto, OSError) as exc:
            reply = Reply.parse(None, _text(exc))
            raise TransportError(f"STAT failed: {reply}", step="folder", reply=reply) from None
        return Reply.parse(None, f"{count} messages, {size} bytes")

    # -- fetching ----------------------------------------------------------------------------

    def _call(self, what: str, call: Callable[[], T]) -> T:
        self._require()
        try:
            return call()
        except poplib.error_proto as exc:
            reply = Reply.parse(None, _text(exc))
            raise TransportError(f"{what} failed: {reply}", step=what, reply=reply) from None
        except (OSError, ssl.SSLError, EOFError) as exc:
            raise TransportError(f"{what}: connection lost: {exc}", step=what) from None

    def unique_ids(self) -> dict[int, str]:
        """UIDL: message number -> unique id of every message in the maildrop."""
        connection = self._require()
        _, lines, _ = self._call("uidl", connection.uidl)
        out: dict[int, str] = {}
        for line in lines:
            number, _, uid = line.decode("utf-8", "replace").partition(" ")
            out[int(number)] = uid.strip()
        return out

    def sizes(self) -> dict[int, int]:
        """LIST: message number -> size in octets."""
        connection = self._require()
        _, lines, _ = self._call("list", connection.list)
        out: dict[int, int] = {}
        for line in lines:
            number, _, size = line.decode().partition(" ")
            out[int(number)] = int(size.split()[0])
        return out

    def retrieve(self, number: int, out: Sink) -> int:
        """RETR one message into `out` as it arrives (dot-unstuffed, line endings as sent), never
        whole in memory; return the number of bytes written."""
        connection = self._require()
        raw: Any = connection

        def read() -> int:
            raw._putcmd(f"RETR {number}")
            raw._getresp()
            written, line_start = 0, True
            for _ in range(MAX_READS):
                # Long lines arrive in pieces; only a piece at a line start can be the final
                # "." or carry a stuffed dot (RFC 1939 section 3).
                piece: bytes = raw.file.readline(READ_BYTES)
                if not piece:
                    raise EOFError("the server closed the connection during RETR")
                if line_start and piece in (b".\r\n", b".\n"):
                    return written
                if line_start and piece.startswith(b".."):
                    piece = piece[1:]
                out.write(piece)
                written += len(piece)
                line_start = piece.endswith(b"\n")
            raise poplib.error_proto(b"-ERR message too long")

        return self._call("retr", read)

    def delete(self, number: int) -> None:
        """DELE (takes effect when the session ends with QUIT)."""
        connection = self._require()
        self._call("dele", lambda: connection.dele(number))

    def commit(self) -> None:
        """QUIT: the server removes the messages marked with DELE; the connection is closed."""
        connection = self._require()
        try:
            self._call("quit", connection.quit)
        finally:
            self.connection = None
            self._ready = False
