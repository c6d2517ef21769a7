"""Connect your Outlook / Gmail account against the sandbox: the happy paths and what is stored."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.test import Client

from mailgate.oauth.models import Grant, OAuthState
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer, ServerStatus
from tests.oauth.conftest import Browser, callback_path, connect, start_connect


def test_connecting_outlook_stores_encrypted_tokens_and_shows_token_valid(
    admin_client: Client, outlook_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    response = connect(admin_client, browser, outlook_server, idp.demo["password"])
    assert response.status_code == 302
    assert response["Location"] == (
        f"/settings/technical/mail-servers/{outlook_server.pk}/#connection"
    )  # the page opens on its connection panel
    grant = Grant.objects.get(server=outlook_server)
    assert grant.account == "alex@contoso.example"
    assert grant.refresh_token is not None and grant.access_token is not None
    assert grant.access_expires_at is not None
    assert "SMTP.Send" in grant.granted_scopes
    assert not OAuthState.objects.exists()
    outlook_server.refresh_from_db()
    assert outlook_server.status == ServerStatus.TOKEN_VALID
    # The tokens are stored encrypted: the raw column is Fernet ciphertext.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT refresh_token, access_token FROM oauth_grant WHERE id = %s", [grant.pk]
        )
        raw_refresh, raw_access = cursor.fetchone()
    assert raw_refresh.startswith("gAAAA") and grant.refresh_token.reveal() not in raw_refresh
    assert raw_access.startswith("gAAAA") and grant.access_token.reveal() not in raw_access

    page = admin_client.get(response["Location"]).content.decode()
    assert page.count("Token Valid") == 1
    assert "alex@contoso.example" in page
    assert grant.access_token.reveal() not in page
    assert grant.refresh_token.reveal() not in page


def test_the_authorize_request_is_what_microsoft_documents(
    admin_client: Client, outlook_server: MailServer, idp: Sandbox
) -> None:
    url = start_connect(admin_client, outlook_server)
    parts = urlsplit(url)
    assert url.startswith(f"{idp.login_url}/contoso.example/oauth2/v2.0/authorize?")
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["redirect_uri"] == "http://127.0.0.1:8000/oauth/microsoft/callback"
    assert query["code_challenge_method"] == "S256"
    assert query["response_mode"] == "query"
    assert query["login_hint"] == outlook_server.username
    assert len(query["state"]) >= 32
    assert set(query["scope"].split()) == {
        "offline_access",
        "openid",
        "email",
        "profile",
        "https://outlook.office.com/SMTP.Send",
    }
    state = OAuthState.objects.get()
    assert state.server_id == outlook_server.pk
    assert query["state"] not in state.state_hash  # only a digest is stored


def test_connecting_gmail_works_the_same_way(
    admin_client: Client, gmail_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    url = start_connect(admin_client, gmail_server)
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith(idp.google_auth_url)
    assert query["access_type"] == "offline" and query["prompt"] == "consent"
    assert "https://mail.google.com/" in query["scope"].split()
    location = browser.sign_in(url, gmail_server.username, idp.demo["google_password"])
    parts = urlsplit(location)
    response = admin_client.get(f"{parts.path}?{parts.query}")
    assert response.status_code == 302
    grant = Grant.objects.get(server=gmail_server)
    assert grant.account == "chris@gmail.example"
    gmail_server.refresh_from_db()
    assert gmail_server.status == ServerStatus.TOKEN_VALID


def test_viewers_cannot_start_a_sign_in(viewer_client: Client, outlook_server: MailServer) -> None:
    assert viewer_client.post(f"/oauth/servers/{outlook_server.pk}/connect").status_code == 403
    assert not OAuthState.objects.exists()


def test_connect_is_post_only(admin_client: Client, outlook_server: MailServer) -> None:
    assert admin_client.get(f"/oauth/servers/{outlook_server.pk}/connect").status_code == 405


def test_connect_requires_csrf(admin: object, outlook_server: MailServer) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)  # type: ignore[arg-type]
    assert client.post(f"/oauth/servers/{outlook_server.pk}/connect").status_code == 403


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("client_id", "", "Client ID"),
        ("client_secret", "", "Client Secret"),
        ("tenant", "not a tenant", "Tenant"),
    ],
)
def test_connect_names_the_missing_setup_field(
    admin_client: Client, outlook_server: MailServer, field: str, value: str, needle: str
) -> None:
    setattr(outlook_server, field, value)
    outlook_server.save()
    response = admin_client.post(f"/oauth/servers/{outlook_server.pk}/connect", follow=True)
    assert needle in response.content.decode()
    assert not OAuthState.objects.exists()


def test_a_signed_in_account_other_than_the_username_is_refused(
    admin_client: Client, outlook_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    idp.control.call("update_user", user="megan@contoso.example", password="Megan-pass-123")
    location = browser.sign_in(
        start_connect(admin_client, outlook_server), "megan@contoso.example", "Megan-pass-123"
    )
    response = admin_client.get(callback_path(location))
    page = response.content.decode()
    assert "Signed in with another account" in page
    assert "megan@contoso.example" in page and "alex@contoso.example" in page
    assert not Grant.objects.exists()
    outlook_server.refresh_from_db()
    assert outlook_server.status == ServerStatus.NOT_CONNECTED
