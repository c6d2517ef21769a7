"""Every AADSTS case the sandbox emulates, produced by a real request and checked for Microsoft's shape."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from mailgate.sandbox.server import Sandbox
from tests.sandbox_fixtures import ca_context, complete_sign_in, page_form, redirect_params

pytestmark = pytest.mark.nodb

REDIRECT = "http://127.0.0.1:8000/oauth/microsoft/callback"
SCOPE = "offline_access openid https://outlook.office.com/SMTP.Send https://outlook.office.com/IMAP.AccessAsUser.All"
VERIFIER = "x" * 43 + "-verifier"
CHALLENGE = (
    base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
)
DESCRIPTION = re.compile(
    r"^AADSTS(\d+): .+\r\nTrace ID: [0-9a-f-]{36}\r\nCorrelation ID: [0-9a-f-]{36}\r\n"
    r"Timestamp: \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$",
    re.DOTALL,
)


@pytest.fixture
def browser(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(verify=ca_context(sandbox.ca_file), base_url=sandbox.https_url) as client:
        yield client


def authorize_url(sandbox: Sandbox, tenant: str | None = None, **overrides: Any) -> str:
    demo = sandbox.demo
    params = {
        "client_id": demo["client_id"],
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "response_mode": "query",
        "scope": SCOPE,
        "state": "st-123",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        "login_hint": demo["user"],
    }
    params.update(overrides)
    params = {k: v for k, v in params.items() if v is not None}
    return f"{sandbox.https_url}/{tenant or demo['tenant_id']}/oauth2/v2.0/authorize?{urlencode(params)}"


def assert_aad_json(response: httpx.Response, code: int, error: str, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    match = DESCRIPTION.match(body["error_description"])
    assert match and int(match.group(1)) == code, body["error_description"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", body["timestamp"])
    assert re.fullmatch(r"[0-9a-f-]{36}", body["trace_id"])
    assert re.fullmatch(r"[0-9a-f-]{36}", body["correlation_id"])
    assert body["error_uri"].endswith(f"/error?code={code}")
    return body


def assert_error_page(response: httpx.Response, code: int) -> None:
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert f"AADSTS{code}:" in response.text
    assert "Correlation Id:" in response.text


def assert_redirect_error(response: httpx.Response, code: int, error: str) -> None:
    params = redirect_params(response)
    assert response.headers["location"].startswith(REDIRECT + "?")
    assert params["error"] == error
    assert params["state"] == "st-123"
    match = DESCRIPTION.match(params["error_description"])
    assert match and int(match.group(1)) == code


def get_code(sandbox: Sandbox, browser: httpx.Client, **overrides: Any) -> str:
    response = complete_sign_in(
        browser, authorize_url(sandbox, **overrides), sandbox.demo["user"], sandbox.demo["password"]
    )
    params = redirect_params(response)
    assert params["state"] == "st-123"
    return params["code"]


def redeem(
    sandbox: Sandbox, code: str, tenant: str | None = None, **overrides: Any
) -> httpx.Response:
    demo = sandbox.demo
    data = {
        "client_id": demo["client_id"],
        "client_secret": demo["client_secret"],
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": VERIFIER,
    }
    data.update(overrides)
    data = {k: v for k, v in data.items() if v is not None}
    return httpx.post(
        f"{sandbox.https_url}/{tenant or demo['tenant_id']}/oauth2/v2.0/token",
        data=data,
        verify=ca_context(sandbox.ca_file),
    )


def refresh(sandbox: Sandbox, token: str, **overrides: Any) -> httpx.Response:
    demo = sandbox.demo
    data = {
        "client_id": demo["client_id"],
        "client_secret": demo["client_secret"],
        "grant_type": "refresh_token",
        "refresh_token": token,
        "scope": "https://outlook.office.com/SMTP.Send offline_access",
    }
    data.update(overrides)
    return httpx.post(
        f"{sandbox.https_url}/{demo['tenant_id']}/oauth2/v2.0/token",
        data={k: v for k, v in data.items() if v is not None},
        verify=ca_context(sandbox.ca_file),
    )


def tokens(sandbox: Sandbox, browser: httpx.Client) -> dict:
    response = redeem(sandbox, get_code(sandbox, browser))
    assert response.status_code == 200, response.text
    return response.json()


# -- success shapes -----------------------------------------------------------------------------


def test_the_code_flow_answers_with_the_documented_fields(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    sandbox.control.call("update_settings", access_token_lifetime=3700)
    body = tokens(sandbox, browser)
    assert list(body)[:6] == [
        "token_type",
        "scope",
        "expires_in",
        "ext_expires_in",
        "access_token",
        "refresh_token",
    ]
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == 3700
    assert set(body["scope"].split()) >= {
        "https://outlook.office.com/SMTP.Send",
        "https://outlook.office.com/IMAP.AccessAsUser.All",
    }
    claims = sandbox.state.signing_key.decode(body["id_token"], now=sandbox.state.now())  # type: ignore[union-attr]
    assert claims["aud"] == sandbox.demo["client_id"]
    assert claims["iss"] == f"{sandbox.https_url}/{sandbox.demo['tenant_id']}/v2.0"
    assert claims["preferred_username"] == claims["email"] == "alex@contoso.example"
    assert {"oid", "sub", "tid", "iat", "nbf", "exp", "name"} <= set(claims)


def test_no_refresh_token_without_offline_access_and_no_id_token_without_openid(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    code = get_code(sandbox, browser, scope="https://outlook.office.com/SMTP.Send")
    body = redeem(sandbox, code).json()
    assert "access_token" in body
    assert "refresh_token" not in body
    assert "id_token" not in body


def test_the_nonce_is_echoed_in_the_id_token(sandbox: Sandbox, browser: httpx.Client) -> None:
    body = redeem(sandbox, get_code(sandbox, browser, nonce="n-42")).json()
    claims = sandbox.state.signing_key.decode(body["id_token"], now=sandbox.state.now())  # type: ignore[union-attr]
    assert claims["nonce"] == "n-42"


def test_plain_pkce_and_http_basic_client_authentication(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    code = get_code(
        sandbox, browser, code_challenge="plain-verifier-" + "p" * 40, code_challenge_method=None
    )
    demo = sandbox.demo
    response = httpx.post(
        f"{sandbox.https_url}/{demo['tenant_id']}/oauth2/v2.0/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": "plain-verifier-" + "p" * 40,
        },
        auth=(demo["client_id"], demo["client_secret"]),
        verify=ca_context(sandbox.ca_file),
    )
    assert response.status_code == 200, response.text


def test_form_post_and_fragment_response_modes(sandbox: Sandbox, browser: httpx.Client) -> None:
    response = complete_sign_in(
        browser,
        authorize_url(sandbox, response_mode="form_post"),
        sandbox.demo["user"],
        sandbox.demo["password"],
    )
    assert response.status_code == 200
    assert f"action='{REDIRECT}'" in response.text
    assert "name='code'" in response.text and "value='st-123'" in response.text
    response = browser.get(authorize_url(sandbox, response_mode="fragment"))
    assert response.status_code == 302
    assert response.headers["location"].startswith(REDIRECT + "#code=")


def test_a_path_less_redirect_uri_gets_a_trailing_slash(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    sandbox.control.add_redirect_uri(sandbox.demo["client_id"], "https://app.example")
    response = complete_sign_in(
        browser,
        authorize_url(sandbox, redirect_uri="https://app.example"),
        sandbox.demo["user"],
        sandbox.demo["password"],
    )
    assert response.headers["location"].startswith("https://app.example/?code=")


def test_a_localhost_redirect_uri_matches_on_any_port(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    response = complete_sign_in(
        browser,
        authorize_url(sandbox, redirect_uri="http://127.0.0.1:9999/oauth/microsoft/callback"),
        sandbox.demo["user"],
        sandbox.demo["password"],
    )
    assert response.headers["location"].startswith(
        "http://127.0.0.1:9999/oauth/microsoft/callback?code="
    )


def test_refresh_rotates_and_the_old_token_stays_valid(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    first = tokens(sandbox, browser)
    second = refresh(sandbox, first["refresh_token"])
    assert second.status_code == 200, second.text
    assert second.json()["refresh_token"] != first["refresh_token"]
    assert refresh(sandbox, first["refresh_token"]).status_code == 200
    assert refresh(sandbox, second.json()["refresh_token"]).status_code == 200


def test_a_refresh_for_two_resources_returns_a_token_for_the_first(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    first = tokens(sandbox, browser)
    body = refresh(
        sandbox,
        first["refresh_token"],
        scope="https://outlook.office.com/IMAP.AccessAsUser.All User.Read",
    ).json()
    claims = sandbox.state.verify_access_token(body["access_token"])  # type: ignore[union-attr]
    assert claims["aud"] == "https://outlook.office.com"


def test_the_session_cookie_skips_the_sign_in_page(sandbox: Sandbox, browser: httpx.Client) -> None:
    get_code(sandbox, browser)
    response = browser.get(authorize_url(sandbox))
    assert response.status_code == 302 and "code=" in response.headers["location"]
    forced = browser.get(authorize_url(sandbox, prompt="login"))
    assert forced.status_code == 200 and "name='password'" in forced.text
    consent = browser.get(authorize_url(sandbox, prompt="consent"))
    assert "name='decision'" in consent.text


def test_the_sign_in_page_is_prefilled_from_login_hint(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    response = browser.get(authorize_url(sandbox))
    assert "value='alex@contoso.example'" in response.text
    assert "<label for='username'>Email</label>" in response.text
    assert "<label for='password'>Password</label>" in response.text


def test_prompt_none_without_a_session_is_login_required(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    assert_redirect_error(
        browser.get(authorize_url(sandbox, prompt="none")), 50058, "login_required"
    )


def test_the_consent_page_lists_the_permissions_in_words(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    page = browser.get(authorize_url(sandbox))
    action, ctx = page_form(page.text)
    consent = browser.post(
        action,
        data={"ctx": ctx, "username": sandbox.demo["user"], "password": sandbox.demo["password"]},
    )
    assert "Send email as you (SMTP.Send)" in consent.text
    assert "Read and write access to your mail (IMAP.AccessAsUser.All)" in consent.text
    assert "Maintain access to data you have given it access to (offline_access)" in consent.text
    assert ">Accept</button>" in consent.text and ">Cancel</button>" in consent.text


def test_admin_consent_skips_the_consent_page(sandbox: Sandbox, browser: httpx.Client) -> None:
    sandbox.control.call("set_admin_consent", client_id=sandbox.demo["client_id"])
    page = browser.get(authorize_url(sandbox))
    action, ctx = page_form(page.text)
    response = browser.post(
        action,
        data={"ctx": ctx, "username": sandbox.demo["user"], "password": sandbox.demo["password"]},
    )
    assert response.status_code == 302 and "code=" in response.headers["location"]


# -- errors on the authorization endpoint's own page (no redirect) -------------------------------


def test_aadsts50011_redirect_uri_mismatch_is_a_page(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    response = browser.get(authorize_url(sandbox, redirect_uri="https://evil.example/cb"))
    assert_error_page(response, 50011)
    assert "https://evil.example/cb" in response.text


def test_aadsts500113_no_redirect_uri_registered(sandbox: Sandbox, browser: httpx.Client) -> None:
    sandbox.control.call("update_app", client_id=sandbox.demo["client_id"], redirect_uris=[])
    assert_error_page(browser.get(authorize_url(sandbox)), 500113)


def test_aadsts700016_unknown_client(sandbox: Sandbox, browser: httpx.Client) -> None:
    assert_error_page(
        browser.get(authorize_url(sandbox, client_id="00000000-1111-2222-3333-444444444444")),
        700016,
    )


def test_aadsts90002_unknown_tenant(sandbox: Sandbox, browser: httpx.Client) -> None:
    assert_error_page(browser.get(authorize_url(sandbox, tenant="fabrikam.example")), 90002)


def test_aadsts50194_single_tenant_app_on_common(sandbox: Sandbox, browser: httpx.Client) -> None:
    sandbox.control.call("update_app", client_id=sandbox.demo["client_id"], audience="AzureADMyOrg")
    assert_error_page(browser.get(authorize_url(sandbox, tenant="common")), 50194)


def test_aadsts9002332_work_only_app_on_consumers(sandbox: Sandbox, browser: httpx.Client) -> None:
    sandbox.control.call(
        "update_app", client_id=sandbox.demo["client_id"], audience="AzureADMultipleOrgs"
    )
    assert_error_page(browser.get(authorize_url(sandbox, tenant="consumers")), 9002332)


def test_the_verified_domain_and_organizations_work_as_tenant(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    for tenant in ("contoso.example", "organizations", "common"):
        browser.cookies.clear()
        response = complete_sign_in(
            browser,
            authorize_url(sandbox, tenant=tenant),
            sandbox.demo["user"],
            sandbox.demo["password"],
        )
        assert "code" in redirect_params(response), tenant


def test_aadsts50105_user_not_assigned(sandbox: Sandbox, browser: httpx.Client) -> None:
    sandbox.control.call(
        "update_app", client_id=sandbox.demo["client_id"], assignment_required=True
    )
    response = complete_sign_in(
        browser, authorize_url(sandbox), sandbox.demo["user"], sandbox.demo["password"]
    )
    assert_error_page(response, 50105)
    sandbox.control.call(
        "assign_user", client_id=sandbox.demo["client_id"], user=sandbox.demo["user"]
    )
    response = complete_sign_in(
        browser, authorize_url(sandbox), sandbox.demo["user"], sandbox.demo["password"]
    )
    assert "code" in redirect_params(response)


def test_aadsts50126_wrong_password_on_the_sign_in_page(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    response = complete_sign_in(
        browser, authorize_url(sandbox), sandbox.demo["user"], "not-the-password"
    )
    assert response.status_code == 200
    assert "Your account or password is incorrect." in response.text
    assert "AADSTS50126:" in response.text
    assert sandbox.control.counters()["aadsts_50126"] >= 1


def test_aadsts50020_a_consumer_account_on_a_tenant_endpoint(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    response = complete_sign_in(
        browser,
        authorize_url(sandbox, login_hint=None),
        sandbox.demo["consumer_user"],
        sandbox.demo["consumer_password"],
    )
    assert_error_page(response, 50020)


def test_the_consumer_account_signs_in_on_consumers(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    response = complete_sign_in(
        browser,
        authorize_url(sandbox, tenant="consumers", login_hint=sandbox.demo["consumer_user"]),
        sandbox.demo["consumer_user"],
        sandbox.demo["consumer_password"],
    )
    code = redirect_params(response)["code"]
    body = redeem(sandbox, code, tenant="consumers").json()
    claims = sandbox.state.verify_access_token(body["access_token"])  # type: ignore[union-attr]
    assert claims["tid"] == "9188040d-6c67-4c5b-b112-36a304b66dad"


def test_aadsts53003_conditional_access_blocks_sign_in(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    sandbox.control.call("update_tenant", tenant="contoso.example", conditional_access_block=True)
    response = complete_sign_in(
        browser, authorize_url(sandbox), sandbox.demo["user"], sandbox.demo["password"]
    )
    assert_error_page(response, 53003)


# -- errors redirected to the app -------------------------------------------------------------


def test_aadsts65004_consent_declined_redirects_access_denied(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    response = complete_sign_in(
        browser,
        authorize_url(sandbox),
        sandbox.demo["user"],
        sandbox.demo["password"],
        accept=False,
    )
    assert_redirect_error(response, 65004, "access_denied")


def test_aadsts70011_invalid_scope_redirects(sandbox: Sandbox, browser: httpx.Client) -> None:
    response = browser.get(authorize_url(sandbox, scope="https://outlook.office.com/SMTP.Sendd"))
    assert_redirect_error(response, 70011, "invalid_scope")


def test_a_missing_scope_redirects_invalid_request(sandbox: Sandbox, browser: httpx.Client) -> None:
    assert_redirect_error(
        browser.get(authorize_url(sandbox, scope=None)), 900144, "invalid_request"
    )


def test_aadsts9002313_malformed_request_redirects(sandbox: Sandbox, browser: httpx.Client) -> None:
    response = browser.get(authorize_url(sandbox, prompt="select_account"))
    assert_redirect_error(response, 9002313, "invalid_request")


def test_prompt_none_needing_consent_is_consent_required(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    get_code(sandbox, browser, scope="openid https://outlook.office.com/SMTP.Send")
    response = browser.get(
        authorize_url(
            sandbox, prompt="none", scope="https://outlook.office.com/POP.AccessAsUser.All"
        )
    )
    assert_redirect_error(response, 65001, "consent_required")


# -- token endpoint errors --------------------------------------------------------------------


def test_aadsts7000215_wrong_secret_is_401(sandbox: Sandbox, browser: httpx.Client) -> None:
    code = get_code(sandbox, browser)
    assert_aad_json(
        redeem(sandbox, code, client_secret=sandbox.demo["client_secret_id"]),
        7000215,
        "invalid_client",
        401,
    )


def test_aadsts7000222_expired_secret_is_401(sandbox: Sandbox, browser: httpx.Client) -> None:
    code = get_code(sandbox, browser)
    sandbox.control.expire_secret(sandbox.demo["client_id"])
    assert_aad_json(redeem(sandbox, code), 7000222, "invalid_client", 401)


def test_a_rotated_secret_works_and_the_old_one_does_not(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    new = sandbox.control.call("rotate_secret", client_id=sandbox.demo["client_id"])
    code = get_code(sandbox, browser)
    assert_aad_json(redeem(sandbox, code), 7000215, "invalid_client", 401)
    assert redeem(sandbox, code, client_secret=new["value"]).status_code == 200


def test_aadsts7000218_confidential_client_without_secret(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    code = get_code(sandbox, browser)
    assert_aad_json(redeem(sandbox, code, client_secret=None), 7000218, "invalid_client", 401)


def test_aadsts700025_public_client_with_secret(sandbox: Sandbox, browser: httpx.Client) -> None:
    sandbox.control.call("update_app", client_id=sandbox.demo["client_id"], public_client=True)
    code = get_code(sandbox, browser)
    assert_aad_json(redeem(sandbox, code), 700025, "invalid_client", 401)
    assert redeem(sandbox, code, client_secret=None).status_code == 200


def test_aadsts700016_unknown_client_at_the_token_endpoint(sandbox: Sandbox) -> None:
    response = redeem(sandbox, "x", client_id="00000000-1111-2222-3333-444444444444")
    assert_aad_json(response, 700016, "unauthorized_client")


def test_aadsts90002_unknown_tenant_at_the_token_endpoint(sandbox: Sandbox) -> None:
    assert_aad_json(redeem(sandbox, "x", tenant="fabrikam.example"), 90002, "invalid_request")


def test_aadsts50194_single_tenant_app_on_common_at_the_token_endpoint(sandbox: Sandbox) -> None:
    sandbox.control.call("update_app", client_id=sandbox.demo["client_id"], audience="AzureADMyOrg")
    assert_aad_json(redeem(sandbox, "x", tenant="common"), 50194, "invalid_request")


def test_aadsts54005_a_code_is_single_use(sandbox: Sandbox, browser: httpx.Client) -> None:
    code = get_code(sandbox, browser)
    assert redeem(sandbox, code).status_code == 200
    assert_aad_json(redeem(sandbox, code), 54005, "invalid_grant")


def test_aadsts70008_a_code_expires_after_ten_minutes(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    code = get_code(sandbox, browser)
    sandbox.control.advance_clock(601)
    assert_aad_json(redeem(sandbox, code), 70008, "invalid_grant")


def test_aadsts501481_wrong_pkce_verifier(sandbox: Sandbox, browser: httpx.Client) -> None:
    code = get_code(sandbox, browser)
    assert_aad_json(redeem(sandbox, code, code_verifier="y" * 43), 501481, "invalid_grant")


def test_aadsts9002313_a_malformed_code(sandbox: Sandbox) -> None:
    assert_aad_json(redeem(sandbox, "garbage"), 9002313, "invalid_grant")


def test_a_code_is_bound_to_its_redirect_uri(sandbox: Sandbox, browser: httpx.Client) -> None:
    code = get_code(sandbox, browser)
    assert_aad_json(
        redeem(sandbox, code, redirect_uri="http://127.0.0.1:8000/other"), 50011, "invalid_grant"
    )


def test_aadsts28000_two_resources_in_the_code_redemption(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    code = get_code(sandbox, browser)
    response = redeem(
        sandbox,
        code,
        scope="https://outlook.office.com/SMTP.Send https://graph.microsoft.com/User.Read",
    )
    assert_aad_json(response, 28000, "invalid_scope")


def test_aadsts700022_two_resources_in_client_credentials(sandbox: Sandbox) -> None:
    response = redeem(
        sandbox,
        None,
        grant_type="client_credentials",
        scope="https://outlook.office365.com/.default https://graph.microsoft.com/.default",
    )
    assert_aad_json(response, 700022, "invalid_scope")


def test_aadsts9001023_client_credentials_on_common(sandbox: Sandbox) -> None:
    response = redeem(
        sandbox,
        None,
        tenant="common",
        grant_type="client_credentials",
        scope="https://outlook.office365.com/.default",
    )
    assert_aad_json(response, 9001023, "invalid_request")


def test_client_credentials_answer_has_no_scope_and_no_refresh_token(sandbox: Sandbox) -> None:
    body = redeem(
        sandbox,
        None,
        grant_type="client_credentials",
        scope="https://outlook.office365.com/.default",
    ).json()
    assert set(body) == {"token_type", "expires_in", "ext_expires_in", "access_token"}


def test_aadsts50173_revoked_grant(sandbox: Sandbox, browser: httpx.Client) -> None:
    first = tokens(sandbox, browser)
    sandbox.control.advance_clock(1)
    sandbox.control.revoke_grants(sandbox.demo["user"])
    assert_aad_json(refresh(sandbox, first["refresh_token"]), 50173, "invalid_grant")


def test_an_admin_password_reset_revokes_refresh_tokens(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    first = tokens(sandbox, browser)
    sandbox.control.advance_clock(1)
    sandbox.control.call("update_user", user=sandbox.demo["user"], password="New-Password-1")
    assert_aad_json(refresh(sandbox, first["refresh_token"]), 50173, "invalid_grant")


def test_aadsts700082_refresh_token_idle_for_90_days(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    first = tokens(sandbox, browser)
    sandbox.control.advance_clock(89 * 86400)
    kept = refresh(sandbox, first["refresh_token"])
    assert kept.status_code == 200
    sandbox.control.advance_clock(90 * 86400 + 1)
    assert_aad_json(refresh(sandbox, first["refresh_token"]), 700082, "invalid_grant")


def test_aadsts65001_refresh_for_an_unconsented_scope(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    first = tokens(sandbox, browser)
    response = refresh(
        sandbox, first["refresh_token"], scope="https://outlook.office.com/POP.AccessAsUser.All"
    )
    assert_aad_json(response, 65001, "invalid_grant")


def test_aadsts50076_mfa_required_after_the_grant(sandbox: Sandbox, browser: httpx.Client) -> None:
    first = tokens(sandbox, browser)
    sandbox.control.call("update_tenant", tenant="contoso.example", mfa_required=True)
    assert_aad_json(refresh(sandbox, first["refresh_token"]), 50076, "invalid_grant")
    # A new interactive sign-in performs MFA; its grant refreshes again.
    browser.cookies.clear()
    fresh = tokens(sandbox, browser)
    assert refresh(sandbox, fresh["refresh_token"]).status_code == 200


def test_aadsts53003_conditional_access_at_the_token_endpoint(
    sandbox: Sandbox, browser: httpx.Client
) -> None:
    first = tokens(sandbox, browser)
    sandbox.control.call("update_tenant", tenant="contoso.example", conditional_access_block=True)
    assert_aad_json(refresh(sandbox, first["refresh_token"]), 53003, "invalid_grant")


def test_missing_and_unsupported_grant_type(sandbox: Sandbox) -> None:
    assert_aad_json(redeem(sandbox, "x", grant_type=""), 900144, "invalid_request")
    assert_aad_json(redeem(sandbox, "x", grant_type="password"), 70003, "unsupported_grant_type")


# -- faults -----------------------------------------------------------------------------------


def test_the_token_endpoint_fails_with_503_and_500(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(fail=503)
    assert_aad_json(redeem(sandbox, "x"), 90033, "temporarily_unavailable", 503)
    sandbox.control.set_faults(fail=500)
    assert_aad_json(redeem(sandbox, "x"), 50000, "server_error", 500)
    sandbox.control.clear_faults()
    assert_aad_json(redeem(sandbox, "x"), 9002313, "invalid_grant")


def test_the_token_endpoint_flaps_every_other_request(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(flap=True)
    statuses = [redeem(sandbox, "x").status_code for _ in range(4)]
    assert statuses == [503, 400, 503, 400]


def test_a_fault_limited_to_one_request_clears_itself(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(fail=503, remaining=1)
    assert redeem(sandbox, "x").status_code == 503
    assert redeem(sandbox, "x").status_code == 400


def test_a_slow_token_endpoint_makes_the_client_time_out(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(timeout=True, timeout_seconds=5)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{sandbox.http_url}/{sandbox.demo['tenant_id']}/oauth2/v2.0/token",
            data={"grant_type": "refresh_token"},
            timeout=0.3,
        )
    sandbox.control.set_faults(timeout=False, delay=0.3)
    response = httpx.post(
        f"{sandbox.http_url}/{sandbox.demo['tenant_id']}/oauth2/v2.0/token",
        data={"grant_type": "refresh_token", "client_id": sandbox.demo["client_id"]},
        timeout=5,
    )
    assert response.elapsed.total_seconds() >= 0.3


def test_token_requests_are_counted_per_grant_type(sandbox: Sandbox, browser: httpx.Client) -> None:
    sandbox.control.reset_counters()
    first = tokens(sandbox, browser)
    refresh(sandbox, first["refresh_token"])
    refresh(sandbox, first["refresh_token"])
    assert sandbox.control.token_requests() == 3
    assert sandbox.control.token_requests("refresh_token") == 2
    assert sandbox.control.token_requests("authorization_code") == 1
