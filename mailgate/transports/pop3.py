"""POP3 (poplib): implicit TLS / STLS / plain, XOAUTH2 for OAuth mailboxes, USER/PASS, client certificates.

The steps (connect, starttls, authenticate, stat) are methods so the connection test can run them
one by one. Certificate verification is always on (system store + SSL_CERT_FILE).
"""

from __future__ import annotations

import base64
import poplib
import ssl
from collections.abc import Callable
from typing import Any

from mailgate.transports.base import (
    IncomingTransport,
    Reply,
    TransportError,
    tls_context,
)
from mailgate.transports.credentials import (
    BearerToken,
    Password,
    bearer_response,
)


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
