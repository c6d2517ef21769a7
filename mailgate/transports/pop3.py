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

from mailgate.transports.base import IncomingTransport, Reply, TransportError
from mailgate.transports.credentials import (
    BearerToken,
    ClientCertificate,
    Credential,
    Endpoint,
    Password,
    bearer_response,
    require_encryption,
    tls_context,
)


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

    def __init__(
        self, endpoint: Endpoint, credential: Credential | None = None, *, timeout: float = 30.0
    ) -> None:
        self.endpoint = endpoint
        self.credential = credential
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
            text = connection.stls(tls_context(self.credential))
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
        return self.endpoint.security in ("ssl", "starttls") and self.connection is not None

    def authenticate(self) -> Reply:
        """AUTH XOAUTH2 (or OAUTHBEARER) with a bearer token, USER/PASS with a password; a client
        certificate needs no login unless it comes with one."""
        credential = self.credential
        if isinstance(credential, ClientCertificate):
            credential = credential.login
        if isinstance(credential, BearerToken):
            return self._auth_bearer(credential)
        if isinstance(credential, Password):
            return self._auth_password(credential)
        return Reply()

    def _auth_bearer(self, credential: BearerToken) -> Reply:
        connection = self._require()
        require_encryption(self.endpoint, is_encrypted=self.is_encrypted, what="access token")
        token = credential.get_token()
        raw: Any = connection  # poplib offers no AUTH method; its command helper is used
        response = bearer_response("XOAUTH2", credential.username, token)
        payload = base64.b64encode(response.encode()).decode()
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

    def _auth_password(self, credential: Password) -> Reply:
        connection = self._require()
        require_encryption(self.endpoint, is_encrypted=self.is_encrypted, what="password")
        try:
            connection.user(credential.username)
            resp = connection.pass_(credential.password)
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
