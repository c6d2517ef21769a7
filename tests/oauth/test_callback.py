"""The callback: state attacks change nothing; provider errors become plain pages with the fix."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import time_machine
from django.test import Client

from mailgate.oauth.models import Grant, OAuthState
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer, ServerStatus
from tests.oauth.conftest import (
    Browser,
    ProviderPage,
    callback_path,
    connect,
    start_connect,
)


def state_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["state"][0]


def assert_nothing_changed(server: MailServer) -> None:
    assert not Grant.objects.filter(server=server).exists()
    server.refresh_from_db()
    assert server.status == ServerStatus.NOT_CONNECTED


def test_a_callback_without_state_is_refused(
    admin_client: Client, outlook_server: MailServer
) -> None:
    response = admin_client.get("/oauth/microsoft/callback?code=abc")
    assert response.status_code == 400
    assert "without state" in response.content.decode()
    assert_nothing_changed(outlook_server)


def test_a_tampered_state_is_refused_and_the_real_one_survives(
    admin_client: Client, outlook_server: MailServer
) -> None:
    state = state_of(start_connect(admin_client, outlook_server))
    response = admin_client.get(f"/oauth/microsoft/callback?code=abc&state={state}x")
    assert response.status_code == 400
    assert OAuthState.objects.count() == 1
    assert_nothing_changed(outlook_server)


def test_an_expired_state_is_refused(
    admin_client: Client, outlook_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    url = start_connect(admin_client, outlook_server)
    location = browser.sign_in(url, outlook_server.username, idp.demo["password"])
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=11)
    with time_machine.travel(later, tick=False):
        response = admin_client.get(callback_path(location))
    assert response.status_code == 400
    assert "expired" in response.content.decode()
    assert not OAuthState.objects.exists()
    assert_nothing_changed(outlook_server)


def test_a_replayed_callback_is_refused_and_keeps_the_grant(
    admin_client: Client, outlook_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    location = browser.sign_in(
        start_connect(admin_client, outlook_server), outlook_server.username, idp.demo["password"]
    )
    assert admin_client.get(callback_path(location)).status_code == 302
    before = Grant.objects.get(server=outlook_server).refresh_token
    replay = admin_client.get(callback_path(location))
    assert replay.status_code == 400
    assert "already used" in replay.content.decode()
    assert Grant.objects.get(server=outlook_server).refresh_token == before


def test_a_state_from_another_session_is_refused(
    admin_client: Client, admin: object, outlook_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    location = browser.sign_in(
        start_connect(admin_client, outlook_server), outlook_server.username, idp.demo["password"]
    )
    other = Client()
    other.force_login(admin)  # type: ignore[arg-type]
    response = other.get(callback_path(location))
    assert response.status_code == 403
    assert OAuthState.objects.count() == 1
    assert_nothing_changed(outlook_server)
    # The session that started it can still finish.
    assert admin_client.get(callback_path(location)).status_code == 302


def test_a_state_for_another_provider_is_refused(
    admin_client: Client, outlook_server: MailServer
) -> None:
    state = state_of(start_connect(admin_client, outlook_server))
    response = admin_client.get(f"/oauth/google/callback?code=abc&state={state}")
    assert response.status_code == 400
    assert OAuthState.objects.count() == 1
    assert_nothing_changed(outlook_server)


def test_a_state_is_bound_to_its_server(
    admin_client: Client, outlook_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    other = MailServer.objects.create(
        name="Other", auth_method="outlook", username="megan@contoso.example"
    )
    location = browser.sign_in(
        start_connect(admin_client, outlook_server), outlook_server.username, idp.demo["password"]
    )
    assert admin_client.get(callback_path(location)).status_code == 302
    assert Grant.objects.get().server_id == outlook_server.pk
    assert not Grant.objects.filter(server=other).exists()


def test_anonymous_callbacks_go_to_sign_in(client: Client, outlook_server: MailServer) -> None:
    response = client.get("/oauth/microsoft/callback?code=abc&state=x")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


SANDBOX_CODES = [
    50011, 500113, 50194, 700016, 90002, 7000215, 7000222, 7000218, 65001, 65004, 50105, 50126,
    54005, 70008, 700082, 50173, 501481, 9002313, 70011, 700022, 28000, 53003, 50076, 9002332,
    700025,
]  # fmt: skip


@pytest.mark.parametrize("code", SANDBOX_CODES)
def test_each_aadsts_error_becomes_a_plain_page(
    admin_client: Client, outlook_server: MailServer, code: int
) -> None:
    state = state_of(start_connect(admin_client, outlook_server))
    description = (
        f"AADSTS{code}: <b>message</b>\r\nTrace ID: 0000aaaa-11bb\r\n"
        "Correlation ID: aaaa0000-bb11\r\nTimestamp: 2026-01-09 02:02:12Z"
    )
    query = urlencode(
        {"error": "invalid_request", "error_description": description, "state": state}
    )
    response = admin_client.get(f"/oauth/microsoft/callback?{query}")
    page = response.content.decode()
    assert response.status_code == 200
    assert f"AADSTS{code}" in page
    assert "How to fix it" in page
    assert "Trace ID: 0000aaaa-11bb" in page
    assert "<b>message</b>" not in page and "&lt;b&gt;message&lt;/b&gt;" in page
    assert_nothing_changed(outlook_server)


@pytest.mark.parametrize(
    ("error", "needle"),
    [
        ("redirect_uri_mismatch", "Authorized redirect URIs"),
        ("access_denied", "allow access"),
        ("invalid_client", "Client secret"),
        ("invalid_grant", "7 days"),
    ],
)
def test_each_google_error_becomes_a_plain_page(
    admin_client: Client, gmail_server: MailServer, error: str, needle: str
) -> None:
    state = state_of(start_connect(admin_client, gmail_server))
    response = admin_client.get(
        f"/oauth/google/callback?{urlencode({'error': error, 'state': state})}"
    )
    assert response.status_code == 200
    assert needle in response.content.decode()
    assert_nothing_changed(gmail_server)


def test_declining_consent_is_explained(
    admin_client: Client, own_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    location = browser.sign_in(
        start_connect(admin_client, own_server), own_server.username, idp.demo["password"], "cancel"
    )
    page = admin_client.get(callback_path(location)).content.decode()
    assert "Consent declined (AADSTS65004)" in page
    assert_nothing_changed(own_server)


def test_a_pasted_secret_id_is_diagnosed_at_the_code_exchange(
    admin_client: Client,
    own_server: MailServer,
    own_app: dict[str, str],
    browser: Browser,
    idp: Sandbox,
) -> None:
    own_server.client_secret = own_app["secret_id"]  # type: ignore[assignment]
    own_server.save()
    page = connect(admin_client, browser, own_server, idp.demo["password"]).content.decode()
    assert "Invalid client secret (AADSTS7000215)" in page
    assert "not the Secret ID" in page
    assert own_app["secret_id"] not in page
    assert_nothing_changed(own_server)


def test_an_expired_secret_is_diagnosed_at_the_code_exchange(
    admin_client: Client,
    own_server: MailServer,
    own_app: dict[str, str],
    browser: Browser,
    idp: Sandbox,
) -> None:
    idp.control.expire_secret(own_app["client_id"])
    page = connect(admin_client, browser, own_server, idp.demo["password"]).content.decode()
    assert "Client secret expired (AADSTS7000222)" in page
    assert_nothing_changed(own_server)


def test_a_user_not_assigned_to_the_app_is_diagnosed(
    admin_client: Client,
    own_server: MailServer,
    own_app: dict[str, str],
    browser: Browser,
    idp: Sandbox,
) -> None:
    idp.control.call("update_app", client_id=own_app["client_id"], assignment_required=True)
    try:
        location = browser.sign_in(
            start_connect(admin_client, own_server), own_server.username, idp.demo["password"]
        )
    except ProviderPage as page:  # Entra may show it on its own page
        assert "AADSTS50105" in page.text
    else:
        page_text = admin_client.get(callback_path(location)).content.decode()
        assert "User not assigned to the app (AADSTS50105)" in page_text
    assert_nothing_changed(own_server)


def test_conditional_access_is_diagnosed(
    admin_client: Client, own_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    tenant = idp.demo["tenant_id"]
    idp.control.call("update_tenant", tenant=tenant, conditional_access_block=True)
    try:
        try:
            location = browser.sign_in(
                start_connect(admin_client, own_server), own_server.username, idp.demo["password"]
            )
        except ProviderPage as page:
            assert "AADSTS53003" in page.text
        else:
            page_text = admin_client.get(callback_path(location)).content.decode()
            assert "Blocked by Conditional Access (AADSTS53003)" in page_text
    finally:
        idp.control.call("update_tenant", tenant=tenant, conditional_access_block=False)
    assert_nothing_changed(own_server)


def test_a_code_redeemed_too_late_is_diagnosed(
    admin_client: Client, own_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    location = browser.sign_in(
        start_connect(admin_client, own_server), own_server.username, idp.demo["password"]
    )
    idp.control.advance_clock(11 * 60)
    page = admin_client.get(callback_path(location)).content.decode()
    assert "AADSTS70008" in page
    assert_nothing_changed(own_server)


def test_google_cancel_is_explained(
    admin_client: Client, gmail_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    location = browser.sign_in(
        start_connect(admin_client, gmail_server),
        gmail_server.username,
        idp.demo["google_password"],
        "cancel",
    )
    page = admin_client.get(callback_path(location)).content.decode()
    assert "Access denied" in page
    assert_nothing_changed(gmail_server)


def test_a_wrong_google_secret_is_explained(
    admin_client: Client, gmail_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    gmail_server.client_secret = "GOCSPX-wrong"  # type: ignore[assignment]
    gmail_server.save()
    page = connect(
        admin_client, browser, gmail_server, idp.demo["google_password"]
    ).content.decode()
    assert "Invalid OAuth client" in page
    assert "GOCSPX-wrong" not in page
    assert_nothing_changed(gmail_server)
