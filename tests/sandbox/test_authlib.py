"""Proof of fidelity: Authlib's generic OAuth 2.0 client (httpx) runs code + PKCE and refresh against the sandbox."""

from __future__ import annotations

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client

from mailgate.sandbox.server import Sandbox
from tests.sandbox_fixtures import ca_context, complete_sign_in

pytestmark = pytest.mark.nodb


def _run(
    sandbox: Sandbox,
    *,
    client_id: str,
    secret: str,
    scope: str,
    redirect: str,
    authorize: str,
    token_url: str,
    user: str,
    password: str,
    **extra: str,
) -> tuple[OAuth2Client, dict]:
    client = OAuth2Client(
        client_id,
        secret,
        scope=scope,
        redirect_uri=redirect,
        code_challenge_method="S256",
        verify=ca_context(sandbox.ca_file),
    )
    verifier = generate_token(48)
    url, _state = client.create_authorization_url(
        authorize, code_verifier=verifier, login_hint=user, **extra
    )
    with httpx.Client(verify=ca_context(sandbox.ca_file)) as browser:
        final = complete_sign_in(browser, url, user, password)
    assert final.status_code == 302, final.text
    token = client.fetch_token(
        token_url, authorization_response=final.headers["location"], code_verifier=verifier
    )
    return client, token


def test_authlib_code_flow_with_pkce_and_refresh_against_microsoft(sandbox: Sandbox) -> None:
    demo = sandbox.demo
    base = f"{sandbox.https_url}/{demo['tenant_domain']}/oauth2/v2.0"
    client, token = _run(
        sandbox,
        client_id=demo["client_id"],
        secret=demo["client_secret"],
        scope="offline_access openid https://outlook.office.com/SMTP.Send",
        redirect="http://127.0.0.1:8000/oauth/microsoft/callback",
        authorize=f"{base}/authorize",
        token_url=f"{base}/token",
        user=demo["user"],
        password=demo["password"],
    )
    assert token["token_type"] == "Bearer"
    assert token["refresh_token"] and token["id_token"]
    refreshed = client.refresh_token(f"{base}/token", refresh_token=token["refresh_token"])
    assert refreshed["access_token"] != token["access_token"]
    assert refreshed["refresh_token"] != token["refresh_token"]
    claims = sandbox.state.verify_access_token(refreshed["access_token"])  # type: ignore[union-attr]
    assert claims["scp"] == "SMTP.Send"
    client.close()


def test_authlib_code_flow_and_refresh_against_google(sandbox: Sandbox) -> None:
    demo = sandbox.demo
    client, token = _run(
        sandbox,
        client_id=demo["google_client_id"],
        secret=demo["google_client_secret"],
        scope="https://mail.google.com/",
        redirect="http://127.0.0.1:8000/oauth/google/callback",
        authorize=sandbox.google_auth_url,
        token_url=sandbox.google_token_url,
        user=demo["google_user"],
        password=demo["google_password"],
        access_type="offline",
        prompt="consent",
    )
    assert token["access_token"].startswith("ya29.")
    refreshed = client.refresh_token(sandbox.google_token_url, refresh_token=token["refresh_token"])
    assert refreshed["access_token"].startswith("ya29.")
    # Authlib keeps the old refresh token when the answer carries none (Google does not rotate).
    assert refreshed["refresh_token"] == token["refresh_token"]
    client.close()
