"""The sandbox's signing key and its JWTs (access tokens and id_tokens), as the Microsoft identity platform issues them.

One RSA key per state dir, published at /common/discovery/v2.0/keys. `verify_access_token` is what the
sandbox's SMTP server and the Dovecot introspection endpoint use.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

ALGORITHMS = ["RS256"]

OUTLOOK_AUDIENCES = ("https://outlook.office.com", "https://outlook.office365.com")


class InvalidToken(Exception):
    """The token is not one of the sandbox's, or is expired, or has the wrong audience."""


class SigningKey:
    """The RSA key pair under `<state>/signing-key.json`, created on first use."""

    def __init__(self, state_dir: Path) -> None:
        path = Path(state_dir) / "signing-key.json"
        if path.exists():
            data = json.loads(path.read_text())
        else:
            data = dict(RSAKey.generate_key(2048, private=True).as_dict(private=True))
            data["kid"] = uuid.uuid4().hex[:16]
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
        self.kid: str = data["kid"]
        self.private = RSAKey.import_key(data)
        public: dict[str, Any] = dict(self.private.as_dict(private=False))
        public.update(kid=self.kid, use="sig", alg="RS256")
        self.public_jwk = public

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        return jwt.encode(header, claims, self.private, algorithms=ALGORITHMS)

    def decode(self, token: str, *, now: float | None = None) -> dict[str, Any]:
        """Verify signature and lifetime; return the claims."""
        try:
            claims = jwt.decode(token, self.private, algorithms=ALGORITHMS).claims
        except (JoseError, ValueError, TypeError, IndexError) as exc:
            raise InvalidToken(
                f"not a token signed by this sandbox ({exc.__class__.__name__})"
            ) from exc
        current = time.time() if now is None else now
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= current:
            raise InvalidToken("the token has expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > current + 300:
            raise InvalidToken("the token is not valid yet")
        return dict(claims)

    def verify_access_token(
        self,
        token: str,
        *,
        audiences: tuple[str, ...] = OUTLOOK_AUDIENCES,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Claims of a valid access token for one of `audiences` (signature, exp, aud checked)."""
        claims = self.decode(token, now=now)
        if claims.get("aud") not in audiences:
            raise InvalidToken(f"the token's audience {claims.get('aud')!r} is not {audiences[0]}")
        return claims
