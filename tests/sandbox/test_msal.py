"""Proof of fidelity: MSAL for Python obtains, refreshes and caches tokens from the sandbox."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import msal
import pytest

from mailgate.sandbox.server import Sandbox
from tests.sandbox_fixtures import ca_context, complete_sign_in, redirect_params

pytestmark = pytest.mark.nodb

SCOPES = [
    "https://outlook.office.com/SMTP.Send",
    "https://outlook.office.com/IMAP.AccessAsUser.All",
]
REDIRECT = "http://127.0.0.1:8000/oauth/microsoft/callback"


@pytest.fixture(autouse=True)
def _trust_the_sandbox_ca(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets REQUESTS_CA_BUNDLE win over a session's `verify`; point it at the sandbox CA,
    # as an administrator would.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sandbox.ca_file))


def _app(sandbox: Sandbox, **kwargs: object) -> msal.ConfidentialClientApplication:
    demo = sandbox.demo
    return msal.ConfidentialClientApplication(
        demo["client_id"],
        client_credential=demo["client_secret"],
        authority=f"{sandbox.https_url}/{demo['tenant_id']}",
        verify=str(sandbox.ca_file),
        **kwargs,  # type: ignore[arg-type]
    )


def _sign_in(sandbox: Sandbox, app: msal.ConfidentialClientApplication) -> dict:
    flow = app.initiate_auth_code_flow(
        SCOPES, redirect_uri=REDIRECT, login_hint=sandbox.demo["user"]
    )
    assert "code_challenge_method=S256" in flow["auth_uri"]
    with httpx.Client(verify=ca_context(sandbox.ca_file)) as browser:
        final = complete_sign_in(
            browser, flow["auth_uri"], sandbox.demo["user"], sandbox.demo["password"]
        )
    assert final.headers["location"].startswith(REDIRECT + "?")
    return app.acquire_token_by_auth_code_flow(flow, redirect_params(final))


def test_msal_auth_code_flow_with_pkce_gets_outlook_tokens(sandbox: Sandbox) -> None:
    app = _app(sandbox, instance_discovery=False)
    result = _sign_in(sandbox, app)
    assert "error" not in result, result
    assert result["token_type"] == "Bearer"
    assert 3600 <= result["expires_in"] <= 5400
    assert result["refresh_token"]
    assert result["id_token_claims"]["preferred_username"] == "alex@contoso.example"
    assert result["id_token_claims"]["tid"] == sandbox.demo["tenant_id"]
    claims = sandbox.state.verify_access_token(result["access_token"])  # type: ignore[union-attr]
    assert claims["aud"] == "https://outlook.office.com"
    assert set(claims["scp"].split()) == {"SMTP.Send", "IMAP.AccessAsUser.All"}
    assert claims["upn"] == claims["preferred_username"] == "alex@contoso.example"
    assert claims["appid"] == sandbox.demo["client_id"]
    assert 3600 <= claims["exp"] - claims["iat"] <= 5400


def test_msal_instance_discovery_uses_the_sandbox_endpoint(sandbox: Sandbox) -> None:
    app = _app(sandbox, instance_discovery=f"{sandbox.https_url}/common/discovery/instance")
    result = _sign_in(sandbox, app)
    assert "access_token" in result, result


def test_msal_refreshes_with_the_refresh_token_and_from_the_cache(sandbox: Sandbox) -> None:
    app = _app(sandbox, instance_discovery=False)
    first = _sign_in(sandbox, app)
    refreshed = app.acquire_token_by_refresh_token(first["refresh_token"], SCOPES)
    assert "access_token" in refreshed, refreshed
    assert refreshed["refresh_token"] != first["refresh_token"]
    # The old refresh token stays valid after rotation.
    again = app.acquire_token_by_refresh_token(first["refresh_token"], SCOPES)
    assert "access_token" in again, again
    accounts = app.get_accounts(username="alex@contoso.example")
    assert accounts
    silent = app.acquire_token_silent(SCOPES, account=accounts[0], force_refresh=True)
    assert silent and "access_token" in silent, silent
    assert sandbox.control.token_requests("refresh_token") == 3


def test_msal_client_credentials_gets_an_app_token_with_roles(sandbox: Sandbox) -> None:
    sandbox.control.call("set_admin_consent", client_id=sandbox.demo["client_id"])
    app = _app(sandbox, instance_discovery=False)
    result = app.acquire_token_for_client(["https://outlook.office365.com/.default"])
    assert "access_token" in result, result
    assert "refresh_token" not in result
    claims = sandbox.state.verify_access_token(result["access_token"])  # type: ignore[union-attr]
    assert claims["aud"] == "https://outlook.office365.com"
    assert set(claims["roles"]) == {"SMTP.SendAsApp", "IMAP.AccessAsApp", "POP.AccessAsApp"}
    assert "scp" not in claims


def test_msal_reports_a_wrong_secret_as_aadsts7000215(sandbox: Sandbox) -> None:
    demo = sandbox.demo
    app = msal.ConfidentialClientApplication(
        demo["client_id"],
        client_credential=demo["client_secret_id"],
        authority=f"{sandbox.https_url}/{demo['tenant_id']}",
        verify=str(sandbox.ca_file),
        instance_discovery=False,
    )
    result = app.acquire_token_for_client(["https://outlook.office365.com/.default"])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert urlsplit(result["error_uri"]).query == "code=7000215"
