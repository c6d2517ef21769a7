"""The id_token only names who signed in: mailgate is liberal where OIDC Core §3.1.3.7 allows it."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

from mailgate.providers.oidc import IdTokenError, account_claims
from mailgate.sandbox.server import Sandbox
from mailgate.sandbox.tokens import SigningKey

pytestmark = pytest.mark.nodb


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _id_token(tmp_path: Path, **claims: object) -> str:
    now = int(time.time())
    return SigningKey(tmp_path).sign(
        {
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "preferred_username": "alex@contoso.example",
            **claims,
        }
    )


def test_unreachable_keys_fall_back_to_the_token_endpoints_tls(tmp_path: Path) -> None:
    token = _id_token(tmp_path, aud="client-1")
    url = f"http://127.0.0.1:{_closed_port()}/common/discovery/v2.0/keys"
    claims = account_claims(token, client_id="client-1", jwks_url=url)
    assert claims["preferred_username"] == "alex@contoso.example"


def test_a_token_signed_with_the_published_key_is_verified(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    token = _id_token(sandbox.state_dir, aud="client-1")
    url = f"{sandbox.http_url}/common/discovery/v2.0/keys"
    with caplog.at_level(logging.WARNING, logger="mailgate.oauth"):
        claims = account_claims(token, client_id="client-1", jwks_url=url)
    assert claims["preferred_username"] == "alex@contoso.example"
    assert caplog.records == []


def test_a_token_signed_with_another_key_is_refused_when_the_keys_could_be_fetched(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    token = _id_token(tmp_path, aud="client-1")  # a key of its own, not the sandbox's
    url = f"{sandbox.http_url}/common/discovery/v2.0/keys"
    with pytest.raises(IdTokenError, match="signature does not verify"):
        account_claims(token, client_id="client-1", jwks_url=url)


def test_an_id_token_for_another_client_is_refused(tmp_path: Path) -> None:
    token = _id_token(tmp_path, aud="someone-else")
    with pytest.raises(IdTokenError, match="another client"):
        account_claims(token, client_id="client-1")


def test_an_id_token_without_an_audience_is_accepted(tmp_path: Path) -> None:
    claims = account_claims(_id_token(tmp_path), client_id="client-1")
    assert claims["preferred_username"] == "alex@contoso.example"


def test_a_token_that_is_not_a_jwt_is_refused() -> None:
    with pytest.raises(IdTokenError, match="not a JWT"):
        account_claims("opaque-value", client_id="client-1")


@pytest.mark.parametrize(
    ("expires_in", "seconds"),
    [(3599, 3599), ("3599", 3599), ("3599.0", 3599), (None, 3600), ("soon", 3600)],
)
def test_a_token_response_is_read_liberally(expires_in: object, seconds: int) -> None:
    from mailgate.providers.base import TokenSet

    token = TokenSet.from_response({"access_token": "opaque", "expires_in": expires_in})
    assert (token.access_token, token.expires_in, token.refresh_token) == ("opaque", seconds, "")
