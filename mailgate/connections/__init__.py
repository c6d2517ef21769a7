"""Transports for a mail server: its endpoints and its credential, handed to the transport.

The one place where a MailServer's settings and the token lifecycle meet the transports: the
outbox, the incoming side and Test Connection open their connections here, and the transports
stay free of the database and of mailgate.oauth.
"""

from __future__ import annotations

from mailgate.crypto import Sealed
from mailgate.oauth.tokens import get_fresh_access_token
from mailgate.providers.errors import TokenError
from mailgate.servers.models import MailServer
from mailgate.transports.base import IncomingTransport, TransportError
from mailgate.transports.credentials import (
    BearerToken,
    ClientCertificate,
    Credential,
    Endpoint,
    Password,
)
from mailgate.transports.imap import IMAPTransport
from mailgate.transports.pop3 import POP3Transport
from mailgate.transports.smtp import SMTPTransport

__all__ = [
    "credential_for",
    "imap_transport",
    "incoming_endpoint",
    "incoming_transport",
    "pop3_transport",
    "smtp_endpoint",
    "smtp_transport",
]


def smtp_endpoint(server: MailServer) -> Endpoint:
    return Endpoint(server.smtp_host, server.smtp_port, server.smtp_security, "Connection Security")


def incoming_endpoint(server: MailServer) -> Endpoint:
    return Endpoint(
        server.incoming_host,
        server.incoming_port or 0,
        server.incoming_security,
        "Incoming Security",
    )


def _revealed(value: object) -> str:
    return value.reveal() if isinstance(value, Sealed) else ""


def access_token_callable(server: MailServer) -> BearerToken:
    """A bearer credential whose token comes from the token lifecycle when a connection needs one."""

    def token(refused: str | None = None) -> str:
        try:
            return get_fresh_access_token(server, refused=refused)
        except TokenError as exc:
            raise TransportError(
                f"no access token for {server.username}: {exc}",
                permanent=exc.permanent,
                step="token",
                diagnosis=exc.diagnosis,
            ) from None

    return BearerToken(
        server.username,
        token,
        renew=token,
    )


def credential_for(server: MailServer, *, incoming: bool = False) -> Credential | None:
    """The server's credential: a bearer token for OAuth, a client certificate, or a password.

    Outgoing, a certificate server does not log in and a password server without a Username
    sends without AUTH; incoming, a certificate server logs in when it also has a password.
    """
    if server.is_oauth:
        return access_token_callable(server)
    password = _revealed(server.password)
    login = Password(server.username, password) if server.username else None
    if server.auth_method == "certificate":
        if not server.certificate:
            return None
        return ClientCertificate(
            server.certificate,
            _revealed(server.private_key),
            login=login if incoming and password else None,
        )
    return login


def smtp_transport(
    server: MailServer,
    *,
    timeout: float = 30.0,
    pipelining: bool = True,
    chunking: bool = True,
) -> SMTPTransport:
    """An SMTP transport for the server (not yet open)."""
    return SMTPTransport(
        smtp_endpoint(server),
        credential_for(server),
        timeout=timeout,
        pipelining=pipelining,
        chunking=chunking,
    )


def imap_transport(server: MailServer, *, timeout: float = 30.0) -> IMAPTransport:
    """An IMAP transport for the server's Incoming Mail settings (not yet open)."""
    return IMAPTransport(
        incoming_endpoint(server),
        credential_for(server, incoming=True),
        timeout=timeout,
        folder=server.folder_list()[0],
    )


def pop3_transport(server: MailServer, *, timeout: float = 30.0) -> POP3Transport:
    """A POP3 transport for the server's Incoming Mail settings (not yet open)."""
    return POP3Transport(
        incoming_endpoint(server), credential_for(server, incoming=True), timeout=timeout
    )


def incoming_transport(server: MailServer, *, timeout: float = 30.0) -> IncomingTransport:
    """The IMAP or POP3 transport of the server's Incoming Mail protocol (not yet open)."""
    if server.incoming_protocol == "pop3":
        return pop3_transport(server, timeout=timeout)
    return imap_transport(server, timeout=timeout)
