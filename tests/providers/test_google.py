"""Google: the authorization URL, the error catalogue and refresh failure classes."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from mailgate.providers import REGISTRY
from mailgate.providers.errors import ClientCredentialsInvalid, ReconnectRequired, TokenUnavailable
from mailgate.providers.google import errors
from mailgate.providers.http import TokenEndpointError, TransientHTTPError
from mailgate.servers.models import MailServer

pytestmark = pytest.mark.nodb

FLOW = REGISTRY["google"].flow


def test_the_authorization_url_asks_for_offline_access_and_consent(
    settings: pytest.FixtureRequest,
) -> None:
    settings.MAILGATE_GOOGLE_AUTH_URL = "https://accounts.example.test/o/oauth2/v2/auth"  # type: ignore[attr-defined]
    server = MailServer(name="g", auth_method="gmail", username="ann@gmail.com", client_id="c1")
    url = FLOW.authorization_url(
        server, state="s", code_verifier="x" * 50, redirect_uri="https://m.example/cb"
    )
    parts = urlsplit(url)
    assert parts.netloc == "accounts.example.test" and parts.path == "/o/oauth2/v2/auth"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["access_type"] == "offline"
    assert query["prompt"] == "consent"
    assert query["scope"].split() == ["https://mail.google.com/", "openid", "email"]
    assert query["code_challenge_method"] == "S256"
    assert query["login_hint"] == "ann@gmail.com"
    assert query["state"] == "s"


@pytest.mark.parametrize(
    "error", ["redirect_uri_mismatch", "access_denied", "invalid_client", "invalid_grant"]
)
def test_each_google_error_has_a_plain_diagnosis(error: str) -> None:
    diagnosis = FLOW.explain(error, "")
    assert diagnosis.title and diagnosis.explanation and diagnosis.fix


def test_the_testing_mode_expiry_is_explained() -> None:
    assert (
        "7 days" in FLOW.explain("invalid_grant", "Token has been expired or revoked.").explanation
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("invalid_grant", ReconnectRequired),
        ("invalid_client", ClientCredentialsInvalid),
        ("unauthorized_client", ClientCredentialsInvalid),
    ],
)
def test_refresh_failures_are_classified(error: str, expected: type[Exception]) -> None:
    classified = errors.classify(TokenEndpointError(status=400, error=error))
    assert type(classified) is expected


def test_transient_failures_are_retryable() -> None:
    assert isinstance(errors.classify(TransientHTTPError("timeout")), TokenUnavailable)
