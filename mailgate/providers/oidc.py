"""Reading the id_token of a token response: who signed in (`preferred_username` / `email`)."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from mailgate.providers.http import TransientHTTPError, get_json

log = logging.getLogger("mailgate.oauth")

# The signature algorithms Microsoft and Google sign id_tokens with (and a few close relatives).
ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "PS256")


class IdTokenError(Exception):
    """The id_token is malformed, has a bad signature, or is not for this client."""


def unverified_claims(id_token: str) -> dict[str, Any]:
    """The claims of a JWT, without checking its signature (see `account_claims` for when that is fine)."""
    try:
        payload = id_token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise IdTokenError("the id_token is not a JWT") from exc
    if not isinstance(data, dict):
        raise IdTokenError("the id_token payload is not a JSON object")
    return data


def account_claims(id_token: str, *, client_id: str, jwks_url: str = "") -> dict[str, Any]:
    """Claims of an id_token received directly from the token endpoint, for `client_id`.

    With a `jwks_url` the signature is verified against the provider's published keys. Without
    one (or when the keys cannot be fetched) the claims are read unverified: OpenID Connect Core
    1.0 §3.1.3.7 (https://openid.net/specs/openid-connect-core-1_0.html#IDTokenValidation) allows
    the TLS server validation of the token endpoint to stand in for signature validation when the
    token came straight from it, which is the only way mailgate obtains id_tokens.
    """
    claims = unverified_claims(id_token)
    if jwks_url:
        # Keys that cannot be fetched are tolerated with a warning (see above); keys that can be
        # fetched and do not verify the token refuse it.
        try:
            keys = KeySet.import_key_set(get_json(jwks_url))  # type: ignore[arg-type]
        except (TransientHTTPError, ValueError, KeyError, TypeError, JoseError) as exc:
            log.warning(
                "id_token keys unavailable at %s (%s); relying on the token endpoint's TLS",
                jwks_url,
                exc,
            )
        else:
            try:
                claims = dict(jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGORITHMS).claims)
            except (JoseError, ValueError, KeyError) as exc:
                # The provider's own keys say this token is not theirs: a forged or altered token.
                raise IdTokenError(
                    f"its signature does not verify with the provider's keys at {jwks_url} "
                    f"({exc.__class__.__name__})"
                ) from None
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if aud is not None and client_id not in audiences:
        raise IdTokenError(f"the id_token is for another client ({aud!r})")
    return claims


def signed_in_account(claims: dict[str, Any], names: tuple[str, ...]) -> str:
    """The first non-empty claim among `names`, lower-cased."""
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip().lower()
    return ""
