"""API keys (console and CLI), bearer authentication and GET /api/v1/servers."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from mailgate.api.models import APIKey, hash_key
from mailgate.servers.models import MailServer

SECRET = "Zq7Q~api-test-client-secret-value-0000"


def bearer(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


@pytest.fixture
def key(db: None) -> str:
    return APIKey.issue("erp", scope="admin")[1]


@pytest.fixture
def outlook(db: None) -> MailServer:
    return MailServer.objects.create(
        name="Sales",
        auth_method="outlook",
        username="sales@contoso.com",
        client_id="11111111-2222-3333-4444-555555555555",
        client_secret=SECRET,
        smtp_host="smtp.office365.com",
        from_filter="sales@contoso.com, contoso.com",
    )


def test_only_the_hash_of_a_key_is_stored(key: str) -> None:
    row = APIKey.objects.get()
    assert row.key_hash == hash_key(key) and key not in row.key_hash
    assert key.startswith(row.prefix) and len(row.prefix) < len(key) // 3


def test_servers_are_listed_without_any_secret(key: str, outlook: MailServer) -> None:
    response = Client().get("/api/v1/servers", **bearer(key))
    assert response.status_code == 200
    assert SECRET not in response.content.decode()
    (server,) = response.json()
    assert server["name"] == "Sales"
    assert server["has_client_secret"] is True and server["has_password"] is False
    assert server["from_filter"] == ["sales@contoso.com", "contoso.com"]
    assert server["status"] == "not_connected" and server["status_label"] == "Not connected"
    assert server["redirect_url"] == "http://127.0.0.1:8000/oauth/microsoft/callback"
    assert not any(
        "secret" in k and k != "has_client_secret"
        for k in server
        if k != "client_secret_expires_on"
    )
    one = Client().get(f"/api/v1/servers/{outlook.pk}", **bearer(key))
    assert one.status_code == 200 and one.json()["id"] == outlook.pk
    assert Client().get("/api/v1/servers/999", **bearer(key)).status_code == 404


def test_using_a_key_records_when(key: str) -> None:
    assert APIKey.objects.get().last_used_at is None
    Client().get("/api/v1/servers", **bearer(key))
    assert APIKey.objects.get().last_used_at is not None


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz"}, "malformed_authorization"),
        ({"HTTP_AUTHORIZATION": "Bearer "}, "malformed_authorization"),
        ({"HTTP_AUTHORIZATION": "Bearer mg_not-a-real-key"}, "invalid_api_key"),
    ],
)
def test_bad_credentials_get_401_naming_the_problem(
    db: None, headers: dict[str, str], code: str
) -> None:
    response = Client().get("/api/v1/servers", **headers)
    assert response.status_code == 401
    assert response.json()["code"] == code and response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_key_is_refused(key: str) -> None:
    APIKey.objects.get().revoke()
    response = Client().get("/api/v1/servers", **bearer(key))
    assert response.status_code == 401
    assert response.json()["code"] == "revoked_api_key"
    assert "revoked" in response.json()["detail"]


def test_a_session_is_not_an_api_credential(admin_client: Client) -> None:
    assert admin_client.get("/api/v1/servers").status_code == 401


def test_the_openapi_document_describes_servers_and_bearer_auth(db: None) -> None:
    response = Client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert "/api/v1/servers" in doc["paths"]
    schemes = doc["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    props = doc["components"]["schemas"]["ServerOut"]["properties"]
    assert "has_client_secret" in props and "client_secret" not in props


def test_an_admin_creates_a_key_in_the_console_shown_once(admin_client: Client) -> None:
    response = admin_client.post("/settings/api-keys/", {"name": "helpdesk", "scope": "read"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    html = response.content.decode()
    key = re.search(r'id="id_new_key" class="secret-once" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    assert Client().get("/api/v1/servers", **bearer(key)).status_code == 200
    again = admin_client.get("/settings/api-keys/").content.decode()
    assert key not in again and "helpdesk" in again and key[:11] in again


def test_a_duplicate_name_is_refused_naming_the_field(admin_client: Client, key: str) -> None:
    response = admin_client.post("/settings/api-keys/", {"name": "ERP"})
    assert response.status_code == 200
    assert "exists already" in response.content.decode()
    assert APIKey.objects.count() == 1


def test_an_admin_revokes_a_key(admin_client: Client, key: str) -> None:
    row = APIKey.objects.get()
    response = admin_client.post(f"/settings/api-keys/{row.pk}/revoke/")
    assert response.status_code == 302
    assert Client().get("/api/v1/servers", **bearer(key)).status_code == 401


def test_viewers_see_keys_but_cannot_create_or_revoke(viewer_client: Client, key: str) -> None:
    page = viewer_client.get("/settings/api-keys/")
    assert page.status_code == 200 and "erp" in page.content.decode()
    assert "Create API key" not in page.content.decode()
    assert viewer_client.post("/settings/api-keys/", {"name": "x"}).status_code == 403
    row = APIKey.objects.get()
    assert viewer_client.post(f"/settings/api-keys/{row.pk}/revoke/").status_code == 403
    assert APIKey.objects.get().revoked_at is None and APIKey.objects.count() == 1


def test_strangers_are_sent_to_sign_in(stranger_client: Client, key: str) -> None:
    row = APIKey.objects.get()
    for path in ("/settings/api-keys/", f"/settings/api-keys/{row.pk}/revoke/"):
        assert stranger_client.post(path).status_code == 302
    assert stranger_client.get("/settings/api-keys/").status_code == 302


def test_api_key_forms_enforce_csrf(admin: object, key: str) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)  # type: ignore[arg-type]
    assert client.post("/settings/api-keys/", {"name": "x"}).status_code == 403
    row = APIKey.objects.get()
    assert client.post(f"/settings/api-keys/{row.pk}/revoke/").status_code == 403


def test_the_cli_creates_lists_and_revokes_keys(db: None) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("apikeys", "create", "--name", "erp", "--scope", "read", stdout=out, stderr=err)
    key = out.getvalue().strip()
    assert "shown only now" in err.getvalue()
    assert Client().get("/api/v1/servers", **bearer(key)).status_code == 200
    listing = io.StringIO()
    call_command("apikeys", "list", "--json", stdout=listing)
    (row,) = json.loads(listing.getvalue())
    assert row["name"] == "erp" and row["revoked_at"] is None and key not in listing.getvalue()
    call_command("apikeys", "revoke", "erp", stdout=io.StringIO())
    assert Client().get("/api/v1/servers", **bearer(key)).status_code == 401


def test_the_cli_refuses_a_duplicate_or_unknown_name(key: str) -> None:
    with pytest.raises(CommandError, match="--name: a key named 'erp' exists"):
        call_command("apikeys", "create", "--name", "erp")
    with pytest.raises(CommandError, match="no API key named 'nope'"):
        call_command("apikeys", "revoke", "nope")
