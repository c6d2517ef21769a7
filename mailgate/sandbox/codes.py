"""Bearer secrets the sandbox hands out (codes, refresh and access tokens): making them, storing them, PKCE."""

from __future__ import annotations

import base64
import hashlib
import secrets

# How long an authorization code can be redeemed (Microsoft and Google alike).
CODE_LIFETIME = 600


def digest(token: str) -> str:
    """The key under which a bearer secret (code, refresh or access token) is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def random_token(prefix: str, length: int = 64) -> str:
    return prefix + secrets.token_urlsafe(length)[:length]


def b64url(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_challenge(verifier: str, method: str) -> str:
    """The code challenge `verifier` answers (RFC 7636): S256, else plain."""
    if method == "S256":
        return b64url(hashlib.sha256(verifier.encode()).digest())
    return verifier
