"""Google's authorization server in the sandbox: flows, refresh rules, revocation and error shapes."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from mailgate.sandbox.server import Sandbox
from mailgate.sandbox.tokens import InvalidToken
from tests.sandbox_fixtures import ca_context, complete_sign_in, redirect_params

pytestmark = pytest.mark.nodb

REDIRECT = "http://127.0.0.1:8000/oauth/google/callback"
VERIFIER = "g" * 50
CHALLENGE = (
    base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
)


@pytest.fixture
def browser(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(verify=ca_context(sandbox.ca_file)) as client:
        yield client


def auth_url(sandbox: Sandbox, **overrides: Any) -> str:
    params = {
        "client_id": sandbox.demo["google_client_id"],
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "https://mail.google.com/ openid email",
        "access_type": "offline",
        "prompt": "consent",
        "state": "g-state",
        "login_hint": sandbox.demo["google_user"],
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return (
        f"{sandbox.google_auth_url}?{urlencode({k: v for k, v in params.items() if v is not None})}"
    )


def exchange(sandbox: Sandbox, code: str, **overrides: Any) -> httpx.Response:
    data = {
        "code": code,
        "client_id": sandbox.demo["google_client_id"],
        "client_secret": sandbox.demo["google_client_secret"],
        "redirect_uri": REDIRECT,
        "grant_type": "authorization_code",
        "code_verifier": VERIFIER,
    }
    data.update(overrides)
    return httpx.post(
        sandbox.google_token_url,
        data={k: v for k, v in data.items() if v is not None},
        verify=ca_context(sandbox.ca_file),
    )


def refresh(sandbox: Sandbox, token: str, **overrides: Any) -> httpx.Response:
    data = {
        "client_id": sandbox.demo["google_client_id"],
        "client_secret": sandbox.demo["google_client_secret"],
        "refresh_token": token,
        "grant_type": "refresh_token",
    }
    data.update(overrides)
    return httpx.post(sandbox.google_token_url, data=data, verify=ca_context(sandbox.ca_file))


def sign_in(sandbox: Sandbox, browser: httpx.Client, **overrides: Any) -> str:
    response = complete_sign_in(
        browser,
        auth_url(sandbox, **overrides),
        sandbox.demo["google_user"],
        sandbox.demo["google_password"],
    )
    params = redirect_params(response)
    assert params["state"] == "g-state"
    return params["code"]


def test_offline_consent_gives_an_opaque_access_token_and_a_refresh_token(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    response = exchange(sandbox, sign_in(sandbox, browser))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3599
    assert body["access_token"].startswith("ya29.")
    assert body["access_token"].count(".") == 1  # opaque, not a JWT
    assert body["refresh_token"].startswith("1//")
    assert body["scope"] == "https://mail.google.com/ openid email"
    id_claims = sandbox.state.signing_key.decode(body["id_token"], now=sandbox.state.now())  # type: ignore[union-attr]
    assert id_claims["email"] == "chris@gmail.example"
    assert id_claims["iss"] == "https://accounts.google.com"
    claims = sandbox.state.verify_access_token(body["access_token"])  # type: ignore[union-attr]
    assert claims == {
        "aud": "https://mail.google.com/",
        "scp": "https://mail.google.com/ openid email",
        "email": "chris@gmail.example",
        "azp": sandbox.demo["google_client_id"],
        "exp": claims["exp"],
    }


def test_the_consent_page_uses_googles_words(sandbox: Sandbox, browser: httpx.Client) -> None:
    from tests.sandbox_fixtures import page_form

    page = browser.get(auth_url(sandbox))
    action, ctx = page_form(page.text)
    consent = browser.post(
        httpx.URL(sandbox.https_url).join(action),
        data={
            "ctx": ctx,
            "username": sandbox.demo["google_user"],
            "password": sandbox.demo["google_password"],
        },
    )
    assert "Read, compose, send, and permanently delete all your email from Gmail" in consent.text
    assert ">Continue</button>" in consent.text and ">Cancel</button>" in consent.text


def test_refresh_returns_no_new_refresh_token(sandbox: Sandbox, browser: httpx.Client) -> None:
    body = exchange(sandbox, sign_in(sandbox, browser)).json()
    refreshed = refresh(sandbox, body["refresh_token"])
    assert refreshed.status_code == 200
    assert "refresh_token" not in refreshed.json()
    assert refreshed.json()["access_token"].startswith("ya29.")


def test_a_second_consent_without_prompt_consent_gives_no_refresh_token(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    exchange(sandbox, sign_in(sandbox, browser))
    again = exchange(sandbox, sign_in(sandbox, browser, prompt=None)).json()
    assert "refresh_token" not in again


def test_online_access_gives_no_refresh_token(sandbox: Sandbox, browser: httpx.Client) -> None:
    body = exchange(sandbox, sign_in(sandbox, browser, access_type=None)).json()
    assert "refresh_token" not in body


def test_testing_projects_refresh_tokens_die_after_seven_days(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    body = exchange(sandbox, sign_in(sandbox, browser)).json()
    sandbox.control.advance_clock(6 * 86400)
    assert refresh(sandbox, body["refresh_token"]).status_code == 200
    sandbox.control.advance_clock(86400 + 1)
    dead = refresh(sandbox, body["refresh_token"])
    assert dead.status_code == 400
    assert dead.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }


def test_production_projects_keep_their_refresh_tokens(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    sandbox.control.call(
        "update_google_project",
        client_id=sandbox.demo["google_client_id"],
        publishing_status="production",
    )
    body = exchange(sandbox, sign_in(sandbox, browser)).json()
    sandbox.control.advance_clock(30 * 86400)
    assert refresh(sandbox, body["refresh_token"]).status_code == 200


def test_revoking_the_grant_kills_refresh_and_access_tokens(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    body = exchange(sandbox, sign_in(sandbox, browser)).json()
    revoke = httpx.post(
        sandbox.google_revoke_url,
        data={"token": body["access_token"]},
        verify=ca_context(sandbox.ca_file),
    )
    assert revoke.status_code == 200
    assert refresh(sandbox, body["refresh_token"]).json()["error"] == "invalid_grant"
    with pytest.raises(InvalidToken):
        sandbox.state.verify_access_token(body["access_token"])  # type: ignore[union-attr]
    again = httpx.post(
        sandbox.google_revoke_url,
        data={"token": body["access_token"]},
        verify=ca_context(sandbox.ca_file),
    )
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_token"


def test_control_revoke_grants_applies_to_google_users(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    body = exchange(sandbox, sign_in(sandbox, browser)).json()
    sandbox.control.revoke_grants(sandbox.demo["google_user"])
    assert refresh(sandbox, body["refresh_token"]).json()["error"] == "invalid_grant"


def test_a_code_is_single_use_and_bound_to_its_redirect_uri(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    code = sign_in(sandbox, browser)
    wrong = exchange(sandbox, code, redirect_uri="http://127.0.0.1:8000/other")
    assert wrong.json() == {"error": "invalid_grant", "error_description": "Bad Request"}
    code = sign_in(sandbox, browser)
    assert exchange(sandbox, code).status_code == 200
    assert exchange(sandbox, code).json() == {
        "error": "invalid_grant",
        "error_description": "Bad Request",
    }


def test_a_wrong_verifier_is_invalid_grant(sandbox: Sandbox, browser: httpx.Client) -> None:
    response = exchange(sandbox, sign_in(sandbox, browser), code_verifier="h" * 50)
    assert response.json() == {
        "error": "invalid_grant",
        "error_description": "Invalid code verifier.",
    }


def test_a_wrong_secret_is_invalid_client_401(sandbox: Sandbox, browser: httpx.Client) -> None:
    response = exchange(sandbox, sign_in(sandbox, browser), client_secret="GOCSPX-wrong")
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client", "error_description": "Unauthorized"}


def test_redirect_uri_mismatch_is_shown_on_googles_page(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    response = browser.get(
        auth_url(sandbox, redirect_uri="http://127.0.0.1:8000/oauth/google/callback/")
    )
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "Error 400: redirect_uri_mismatch" in response.text


def test_an_unknown_client_is_shown_as_invalid_client(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    response = browser.get(auth_url(sandbox, client_id="nope.apps.googleusercontent.com"))
    assert response.status_code == 401
    assert "Error 401: invalid_client" in response.text


def test_cancel_redirects_access_denied(sandbox: Sandbox, browser: httpx.Client) -> None:
    response = complete_sign_in(
        browser,
        auth_url(sandbox),
        sandbox.demo["google_user"],
        sandbox.demo["google_password"],
        accept=False,
    )
    assert redirect_params(response) == {"error": "access_denied", "state": "g-state"}


def test_tokeninfo_describes_a_live_token(sandbox: Sandbox, browser: httpx.Client) -> None:
    body = exchange(sandbox, sign_in(sandbox, browser)).json()
    info = httpx.post(
        f"{sandbox.https_url}/tokeninfo",
        data={"access_token": body["access_token"]},
        verify=ca_context(sandbox.ca_file),
    )
    assert info.json()["email"] == "chris@gmail.example"
    bad = httpx.post(
        f"{sandbox.https_url}/tokeninfo",
        data={"access_token": "ya29.x"},
        verify=ca_context(sandbox.ca_file),
    )
    assert bad.status_code == 400


def test_google_tokens_are_introspected_for_imap(sandbox: Sandbox, browser: httpx.Client) -> None:
    body = exchange(sandbox, sign_in(sandbox, browser)).json()
    answer = httpx.post(
        f"{sandbox.http_url}/sandbox/introspect/imap", data={"token": body["access_token"]}
    ).json()
    assert answer["active"] is True
    assert answer["username"] == "chris@gmail.example"


def test_google_token_endpoint_faults(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(fail=503)
    response = refresh(sandbox, "1//x")
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert sandbox.control.counters()["google_token_requests_refresh_token"] == 1
