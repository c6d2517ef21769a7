"""What a transport is handed by its caller: where to connect and how to prove who it is.

Transports never look credentials up themselves: the caller (mailgate.connections for mail servers,
a test for a loopback server) builds an Endpoint and one of the credentials below. A bearer
credential holds a callable that returns a fresh access token, so a refresh happens only when a
connection actually authenticates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
    is an opaque string and is never decoded. `renew(refused)`, when given, returns a token other
    than `refused` even if that one looked valid: a server that refuses a token makes the transport
    ask for one new token and try once more (the token may have been revoked while the grant lives).
    """

    username: str
    get_token: Callable[[], str] = field(repr=False)
    renew: Callable[[str], str] | None = field(default=None, repr=False)


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
