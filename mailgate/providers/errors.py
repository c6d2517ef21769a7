"""Errors of the token lifecycle, raised by the providers' token calls and seen by every component that needs a token."""

from __future__ import annotations


class TokenError(Exception):
    """An access token could not be had. `diagnosis` tells the administrator what to do."""

    permanent = False

    def __init__(self, message: str, *, diagnosis: str = "", code: str = "") -> None:
        super().__init__(message)
        self.diagnosis = diagnosis
        self.code = code


class ReconnectRequired(TokenError):
    """The grant is dead (revoked, expired, password reset, consent withdrawn): an administrator must reconnect.

    The server is marked "Reconnect required"; its outgoing mail stays queued (held).
    """

    permanent = True


class ClientCredentialsInvalid(TokenError):
    """The app registration's client ID or secret is wrong or expired: fix the secret, then it resumes."""

    permanent = True


class TokenUnavailable(TokenError):
    """A transient failure (timeout, 5xx, temporarily_unavailable): retry later; the grant is fine."""

    permanent = False
