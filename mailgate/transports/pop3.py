"""POP3 (poplib): implicit TLS / STLS / plain, XOAUTH2 for OAuth mailboxes, USER/PASS, client certificates.

The steps (connect, starttls, authenticate, stat) are methods so the connection test can run them
one by one. Certificate verification is always on (system store + SSL_CERT_FILE).
"""

from __future__ import annotations

import base64
import contextlib
import poplib
import ssl
from typing import Any

from mailgate.conf import is_loopback_host
from mailgate.transports.base import IncomingTransport, Reply, TransportError
from mailgate.transports.imap import token_error
from mailgate.transports.smtp import tls_context, xoauth2_string


def _text(value: bytes | BaseException) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    args = getattr(value, "args", ())
    if args and isinstance(args[0], bytes):
        return str(args[0].decode("utf-8", "replace"))
    return str(value)


class POP3Transport(IncomingTransport):
    """One POP3 connection to a server's incoming mailbox."""

    name = "pop3"
    implicit_tls_port = 995
    plain_port = 110

    def __init__(self, server: Any, *, timeout: float = 30.0) -> None:
        self.server = server
        self.timeout = timeout
        self.connection: poplib.POP3 | None = None
        self._ready = False

    @property
    def is_open(self) -> bool:
        return self._ready and self.connection is not None

    def close(self) -> None:
        connection, self.connection = self.connection, None
        self._ready = False
        if connection is None:
            return
        try:
            connection.quit()
        except (poplib.error_proto, OSError):
            with contextlib.suppress(OSError):
                connection.close()

    def _require(self) -> poplib.POP3:
        if self.connection is None:
            raise TransportError("not connected", step="connect")
        return self.connection

    def connect(self) -> Reply:
        """Open the connection (TLS first for implicit TLS) and read the greeting."""
        server = self.server
        if not server.incoming_host:
            raise TransportError(
                "the server has no Incoming Server host name", permanent=True, step="connect"
            )
        port = server.incoming_port or self.default_port
        try:
            if server.incoming_security == "ssl":
                connection: poplib.POP3 = poplib.POP3_SSL(
                    server.incoming_host, port, timeout=self.timeout, context=tls_context(server)
                )
            else:
                connection = poplib.POP3(server.incoming_host, port, timeout=self.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise TransportError(
                f"the TLS certificate of {self.address} is not trusted: {exc.verify_message}",
                step="tls",
            ) from None
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
            text = connection.stls(tls_context(self.server))
        except ssl.SSLCertVerificationError as exc:
            raise TransportError(
                f"the TLS certificate of {self.address} is not trusted: {exc.verify_message}",
                step="tls",
            ) from None
        except (ssl.SSLError, OSError, poplib.error_proto) as exc:
            raise TransportError(
                f"STLS with {self.address} failed: {_text(exc)}", step="tls"
            ) from None
        return Reply.parse(None, text)

    @property
    def is_encrypted(self) -> bool:
        return self.server.incoming_security in ("ssl", "starttls") and self.connection is not None

    def authenticate(self) -> Reply:
        """AUTH XOAUTH2 for OAuth servers, USER/PASS with the password; certificates need no login."""
        server = self.server
        if server.is_oauth:
            return self._auth_xoauth2()
        if server.auth_method == "certificate" and not server.password:
            return Reply()
        return self._auth_password()

    def _auth_xoauth2(self) -> Reply:
        from mailgate.oauth.errors import TokenError
        from mailgate.oauth.tokens import get_fresh_access_token

        connection = self._require()
        try:
            token = get_fresh_access_token(self.server)
        except TokenError as exc:
            raise token_error(exc, self.server.username) from None
        raw: Any = connection  # poplib offers no AUTH method; its command helper is used
        payload = base64.b64encode(xoauth2_string(self.server.username, token).encode()).decode()
        try:
            # Exchange documents the two-line form: "AUTH XOAUTH2", "+", then the response.
            # Reference: https://learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth#pop-protocol-exchange
            raw._shortcmd("AUTH XOAUTH2")
            resp = raw._shortcmd(payload)
            if not resp.startswith(b"+OK"):
                # An error challenge (base64 JSON): answer empty to receive the final -ERR.
                resp = raw._shortcmd("")
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

    def _auth_password(self) -> Reply:
        connection = self._require()
        server = self.server
        if not self.is_encrypted and not is_loopback_host(server.incoming_host):
            raise TransportError(
                "refusing to send the password over an unencrypted connection: "
                "set Incoming Encryption to SSL/TLS or TLS (STARTTLS)",
                permanent=True,
                step="auth",
            )
        try:
            connection.user(server.username)
            resp = connection.pass_(server.password.reveal() if server.password else "")
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
