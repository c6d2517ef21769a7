"""What a transport is handed by its caller: where to connect and how to prove who it is.

Transports never look credentials up themselves: the caller (mailgate.connections for mail servers,
a test for a loopback server) builds an Endpoint and one of the credentials below. A bearer
credential holds a callable that returns a fresh access token, so a refresh happens only when a
connection actually authenticates.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from mailgate.conf import is_loopback_host
from mailgate.transports.base import TransportError

SECURITIES = ("starttls", "ssl", "none")


@dataclass(frozen=True)
class Endpoint:
    """A server to connect to: host, port and security (starttls, ssl or none).

    `security_label` is the console field that sets the security, named in error messages.
    """

    host: str
    port: int
    security: str
    security_label: str = "Connection Security"

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Password:
    """LOGIN / PLAIN (SMTP, IMAP) or USER / PASS (POP3) with a username and password."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class BearerToken:
    """SASL XOAUTH2 (or OAUTHBEARER where XOAUTH2 is not offered) with an OAuth access token.

    `get_token()` returns a fresh access token or raises TransportError (step "token"); the token
    is an opaque string and is never decoded.
    """

    username: str
    get_token: Callable[[], str] = field(repr=False)


@dataclass(frozen=True)
class ClientCertificate:
    """A TLS client certificate (PEM) and its private key; `login` when the server also wants one."""

    certificate: str
    private_key: str = field(repr=False)
    login: Password | None = None


Credential = Password | BearerToken | ClientCertificate


def xoauth2_string(user: str, access_token: str) -> str:
    """The SASL XOAUTH2 initial client response (before base64), Microsoft's and Google's format."""
    # Reference: https://developers.google.com/gmail/imap/xoauth2-protocol
    return f"user={user}\x01auth=Bearer {access_token}\x01\x01"


def oauthbearer_string(user: str, access_token: str) -> str:
    """The SASL OAUTHBEARER initial client response (before base64)."""
    # Reference: https://www.rfc-editor.org/rfc/rfc7628#section-3.1
    return f"n,a={user},\x01auth=Bearer {access_token}\x01\x01"


def bearer_response(mechanism: str, user: str, access_token: str) -> str:
    """The initial client response of `mechanism` (XOAUTH2 or OAUTHBEARER)."""
    if mechanism == "OAUTHBEARER":
        return oauthbearer_string(user, access_token)
    return xoauth2_string(user, access_token)


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
    """A verifying client context (system store + SSL_CERT_FILE), with the client certificate if any."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if isinstance(credential, ClientCertificate):
        _load_client_certificate(context, credential)
    return context


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
