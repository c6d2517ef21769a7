"""IMAP (IMAPClient): implicit TLS / STARTTLS / plain, XOAUTH2 for OAuth mailboxes, PLAIN/LOGIN, client certificates.

The steps (connect, starttls, authenticate, select_folder) are methods so the connection test can
run them one by one. Certificate verification is always on (system store + SSL_CERT_FILE).
"""

from __future__ import annotations

import ssl
from typing import Any

import imapclient
from imapclient import exceptions as imap_errors

from mailgate.transports.base import (
    IncomingTransport,
    Reply,
    TransportError,
    tls_context,
)
from mailgate.transports.credentials import (
    BearerToken,
    Credential,
    Endpoint,
    Password,
    bearer_response,
)


def _text(exc: BaseException) -> str:
    """An imaplib/IMAPClient error as the server's reply text (without the bytes repr)."""
    text = str(exc)
    if text.startswith(("b'", 'b"')) and text[-1:] in ("'", '"'):
        text = text[2:-1]
    return text


class IMAPTransport(IncomingTransport[imapclient.IMAPClient]):
    """One IMAP connection to a server's incoming mailbox."""

    name = "imap"
    implicit_tls_port = 993
    plain_port = 143

    def __init__(
        self,
        endpoint: Endpoint,
        credential: Credential | None = None,
        *,
        timeout: float = 30.0,
        folder: str = "INBOX",
    ) -> None:
        super().__init__(endpoint, credential, timeout=timeout)
        self.folder = folder

    def _goodbye(
        self, handle: imapclient.IMAPClient
    ) -> tuple[Any, Any, tuple[type[Exception], ...]]:
        return handle.logout, handle.shutdown, (imap_errors.IMAPClientError,)

    def connect(self) -> Reply:
        """Open the connection (TLS first for implicit TLS) and read the greeting."""
        self.check_endpoint()
        implicit = self.endpoint.security == "ssl"
        try:
            client = imapclient.IMAPClient(
                self.endpoint.host,
                port=self.port,
                ssl=implicit,
                ssl_context=tls_context(self.credential) if implicit else None,
                timeout=self.timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise self.untrusted(exc) from None
        except ssl.SSLError as exc:
            raise TransportError(f"TLS with {self.address} failed: {exc}", step="tls") from None
        except (TimeoutError, OSError, imap_errors.IMAPClientError) as exc:
            raise TransportError(
                f"cannot connect to {self.address}: {_text(exc)}", step="connect"
            ) from None
        self.connection = client
        return Reply.parse(None, client.welcome or b"")

    def starttls(self) -> Reply:
        """Upgrade with STARTTLS, verifying the certificate and host name."""
        client = self._require()
        try:
            if b"STARTTLS" not in client.capabilities():
                raise TransportError(
                    f"{self.address} does not offer STARTTLS: choose another Incoming Encryption",
                    permanent=True,
                    step="tls",
                )
            text = client.starttls(tls_context(self.credential))
        except ssl.SSLCertVerificationError as exc:
            raise self.untrusted(exc) from None
        except (ssl.SSLError, OSError, imap_errors.IMAPClientError) as exc:
            raise TransportError(
                f"STARTTLS with {self.address} failed: {_text(exc)}", step="tls"
            ) from None
        return Reply.parse(None, text or b"")

    def _auth_bearer(self, credential: BearerToken) -> Reply:
        client = self._require()
        capabilities = client.capabilities()
        mechanism = (
            "OAUTHBEARER"
            if b"AUTH=XOAUTH2" not in capabilities and b"AUTH=OAUTHBEARER" in capabilities
            else "XOAUTH2"
        )
        response = bearer_response(mechanism, credential.username, credential.get_token())
        answered: list[bool] = []

        def answer(challenge: bytes) -> str:
            # A failure comes as a challenge carrying base64 JSON; it must be answered with an
            # empty response to receive the final NO.
            # Reference: https://developers.google.com/gmail/imap/xoauth2-protocol#error_response
            if answered:
                return ""
            answered.append(True)
            return response

        return self._login(lambda: client.sasl_login(mechanism, answer))

    def _auth_password(self, credential: Password) -> Reply:
        client = self._require()
        username, password = credential.username, credential.password
        if b"LOGINDISABLED" in client.capabilities():
            return self._login(lambda: client.plain_login(username, password))
        return self._login(lambda: client.login(username, password))

    def _login(self, call: Any) -> Reply:
        try:
            text = call()
        except imap_errors.LoginError as exc:
            reply = Reply.parse(None, _text(exc))
            raise TransportError(
                f"authentication failed: {reply}", permanent=True, step="auth", reply=reply
            ) from None
        except (OSError, ssl.SSLError, imap_errors.IMAPClientError) as exc:
            raise TransportError(
                f"authentication with {self.address} failed: {_text(exc)}", step="auth"
            ) from None
        if isinstance(text, list | tuple):
            text = b" ".join(t if isinstance(t, bytes) else str(t).encode() for t in text)
        return Reply.parse(None, text or b"OK")

    def select_folder(self, folder: str | None = None, *, readonly: bool = True) -> Reply:
        """SELECT (read-only by default) the configured folder; the reply names its message count."""
        client = self._require()
        name = folder or self.folder or "INBOX"
        try:
            info = client.select_folder(name, readonly=readonly)
        except (imap_errors.IMAPClientError, OSError, ssl.SSLError) as exc:
            reply = Reply.parse(None, _text(exc))
            raise TransportError(
                f"cannot select folder {name!r}: {reply}",
                permanent=True,
                step="folder",
                reply=reply,
            ) from None
        return Reply.parse(None, f"{name}: {info.get(b'EXISTS', 0)} messages")
