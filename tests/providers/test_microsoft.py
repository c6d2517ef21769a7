"""Microsoft: tenant resolution, national clouds, scopes, the authorization URL, and the error catalogue."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from hypothesis import given
from hypothesis import strategies as st

from mailgate.providers import REGISTRY
from mailgate.providers.errors import ClientCredentialsInvalid, ReconnectRequired, TokenUnavailable
from mailgate.providers.http import TokenEndpointError, TransientHTTPError
from mailgate.providers.microsoft import errors
from mailgate.providers.microsoft.tenant import (
    is_consumer_address,
    is_valid_tenant,
    login_url,
    resolve_tenant,
)
from mailgate.servers.models import MailServer

pytestmark = pytest.mark.nodb

FLOW = REGISTRY["microsoft"].flow
GUID = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def outlook(**fields: object) -> MailServer:
    values: dict[str, object] = {
        "name": "Sales",
        "auth_method": "outlook",
        "username": "alex@contoso.example",
        "client_id": "00001111-aaaa-2222-bbbb-3333cccc4444",
        "smtp_host": "smtp.office365.com",
    }
    values.update(fields)
    return MailServer(**values)


@pytest.mark.parametrize(
    ("tenant", "username", "expected"),
    [
        ("", "alex@contoso.example", "contoso.example"),
        ("", "Someone@Hotmail.com", "consumers"),
        ("", "someone@outlook.com", "consumers"),
        ("", "someone@live.co.uk", "consumers"),
        ("", "someone@msn.com", "consumers"),
        ("", "someone@hotmail.fr", "consumers"),
        ("Organizations", "alex@contoso.example", "organizations"),
        (GUID, "alex@contoso.example", GUID),
        ("contoso.onmicrosoft.com", "alex@contoso.example", "contoso.onmicrosoft.com"),
        ("  common ", "alex@contoso.example", "common"),
    ],
)
def test_it_resolves_the_tenant(tenant: str, username: str, expected: str) -> None:
    assert resolve_tenant(tenant, username) == expected


def test_a_work_address_on_an_outlook_named_company_is_not_a_consumer() -> None:
    assert not is_consumer_address("alex@outlookcompany.com")
    assert not is_consumer_address("alex@contoso.example")


@pytest.mark.parametrize(
    "value",
    ["common", "organizations", "consumers", GUID, "contoso.example", "contoso.onmicrosoft.com"],
)
def test_it_accepts_valid_tenants(value: str) -> None:
    assert is_valid_tenant(value)


@pytest.mark.parametrize("value", ["", "not a tenant", "contoso", "http://contoso.example", "a/b"])
def test_it_refuses_invalid_tenants(value: str) -> None:
    assert not is_valid_tenant(value)


@given(st.text(max_size=40))
def test_tenant_validation_never_crashes(value: str) -> None:
    assert is_valid_tenant(value) in (True, False)


def test_national_clouds_change_the_login_host(settings: pytest.FixtureRequest) -> None:
    settings.MAILGATE_MICROSOFT_LOGIN_URL = "https://127.0.0.1:9999"  # type: ignore[attr-defined]
    assert login_url("global") == "https://127.0.0.1:9999"
    assert login_url("usgov") == "https://login.microsoftonline.us"
    assert login_url("china") == "https://login.chinacloudapi.cn"


def test_scopes_follow_the_directions_in_use() -> None:
    both = outlook(incoming_protocol="imap")
    assert FLOW.scopes(both) == [
        "offline_access",
        "openid",
        "email",
        "profile",
        "https://outlook.office.com/SMTP.Send",
        "https://outlook.office.com/IMAP.AccessAsUser.All",
    ]
    pop_only = outlook(smtp_host="", incoming_protocol="pop3")
    assert FLOW.required_scopes(pop_only) == ["https://outlook.office.com/POP.AccessAsUser.All"]
    usgov = outlook(cloud="usgov")
    assert "https://outlook.office365.us/SMTP.Send" in FLOW.scopes(usgov)


def test_the_authorization_url_carries_pkce_state_hint_and_query_mode(
    settings: pytest.FixtureRequest,
) -> None:
    settings.MAILGATE_MICROSOFT_LOGIN_URL = "https://login.example.test"  # type: ignore[attr-defined]
    server = outlook(incoming_protocol="imap")
    verifier = "v" * 60
    url = FLOW.authorization_url(
        server,
        state="the-state",
        code_verifier=verifier,
        redirect_uri="https://mail.example/oauth/microsoft/callback",
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        "https://login.example.test/contoso.example/oauth2/v2.0/authorize"
    )
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["response_type"] == "code"
    assert query["response_mode"] == "query"
    assert query["client_id"] == server.client_id
    assert query["redirect_uri"] == "https://mail.example/oauth/microsoft/callback"
    assert query["state"] == "the-state"
    assert query["login_hint"] == "alex@contoso.example"
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == create_s256_code_challenge(verifier)
    assert query["scope"].split() == FLOW.scopes(server)


SANDBOX_CODES = [
    50011, 500113, 50194, 700016, 90002, 7000215, 7000222, 7000218, 65001, 65004, 50105, 50126,
    54005, 70008, 700082, 50173, 501481, 9002313, 70011, 700022, 28000, 53003, 50076, 9002332,
    700025,
]  # fmt: skip


@pytest.mark.parametrize("code", SANDBOX_CODES)
def test_every_emulated_aadsts_code_has_a_plain_diagnosis(code: int) -> None:
    description = f"AADSTS{code}: something.\r\nTrace ID: 1\r\nCorrelation ID: 2\r\nTimestamp: x"
    diagnosis = FLOW.explain("invalid_request", description)
    assert f"AADSTS{code}" in diagnosis.title
    assert diagnosis.explanation and diagnosis.fix


def test_a_redirect_mismatch_says_where_to_register_the_url() -> None:
    diagnosis = FLOW.explain("invalid_request", "AADSTS50011: The redirect URI ...")
    assert "Redirect URIs" in diagnosis.fix and "OAuth2 Redirect URL" in diagnosis.fix


def test_a_pasted_secret_id_is_explained() -> None:
    assert "Secret ID" in FLOW.explain("invalid_client", "AADSTS7000215: Invalid").explanation


def test_an_unknown_error_still_gets_a_diagnosis() -> None:
    assert FLOW.explain("weird_error", "").fix


@pytest.mark.parametrize(
    ("status", "error", "code", "expected"),
    [
        (400, "invalid_grant", 50173, ReconnectRequired),
        (400, "invalid_grant", 700082, ReconnectRequired),
        (400, "invalid_grant", 70008, ReconnectRequired),
        (400, "invalid_grant", 65001, ReconnectRequired),
        (400, "interaction_required", 50076, ReconnectRequired),
        (401, "invalid_client", 7000222, ClientCredentialsInvalid),
        (401, "invalid_client", 7000215, ClientCredentialsInvalid),
        (400, "invalid_client", 7000218, ClientCredentialsInvalid),
        (400, "unauthorized_client", 700016, ClientCredentialsInvalid),
    ],
)
def test_refresh_failures_are_classified(
    status: int, error: str, code: int, expected: type[Exception]
) -> None:
    exc = TokenEndpointError(status=status, error=error, description=f"AADSTS{code}: text")
    classified = errors.classify(exc)
    assert type(classified) is expected
    assert classified.code == f"AADSTS{code}"
    assert classified.diagnosis


def test_transient_failures_are_never_fatal() -> None:
    classified = errors.classify(TransientHTTPError("HTTP 503", status=503))
    assert isinstance(classified, TokenUnavailable)
    assert not classified.permanent
