"""Attack 10: acting without a trace. Every security event is logged, by name, and no secret value
ever reaches a row of the log."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from mailgate.api.models import APIKey
from mailgate.audit.log import record
from mailgate.audit.models import AuditEvent
from mailgate.oauth import tokens
from mailgate.providers.base import TokenSet
from mailgate.servers.models import MailServer
from tests.servers.conftest import CLIENT_SECRET, make_certificate, outlook_data, password_data

PASSWORD = "correct horse battery"
SERVER_PASSWORD = "relay-Password-that-must-not-leak-42"
ADD = "/settings/technical/mail-servers/add/"


def kinds() -> list[str]:
    return list(AuditEvent.objects.order_by("id").values_list("kind", flat=True))


def test_every_security_event_is_logged_and_no_secret_reaches_a_row(
    admin: User, outlook_server: MailServer
) -> None:
    admin.set_password(PASSWORD)
    admin.save()
    client = Client(REMOTE_ADDR="192.0.2.7")
    client.post("/accounts/login/", {"username": admin.username, "password": "wrong guess"})
    client.post("/accounts/login/", {"username": admin.username, "password": PASSWORD})
    cert, key = make_certificate()
    assert (
        client.post(ADD, password_data(name="Relay", password=SERVER_PASSWORD)).status_code == 302
    )
    relay = MailServer.objects.get(name="Relay")
    edit = f"/settings/technical/mail-servers/{relay.pk}/"
    changed = password_data(name="Relay", password="another-Secret-value-99", priority="3")
    assert client.post(edit, changed).status_code == 302
    certificate = password_data(
        name="Cert", auth_method="certificate", password="", certificate=cert, private_key=key
    )
    assert client.post(ADD, certificate).status_code == 302
    sales = outlook_data(name="Sales2", client_secret=CLIENT_SECRET)
    assert client.post(ADD, sales).status_code == 302
    tokens.store_grant(
        outlook_server,
        tokens=TokenSet("access-token-value", 3600, refresh_token="refresh-token-value"),
        account=outlook_server.username,
        scopes=[],
    )
    record("connected", subject=outlook_server.name)
    tokens.disconnect(outlook_server)
    response = client.post("/settings/api-keys/", {"name": "erp", "scope": "send"})
    new_key = response.context["new_key"]
    client.post(f"/settings/api-keys/{APIKey.objects.get().pk}/revoke/")
    call_command("rotate_keys", stdout=io.StringIO())
    client.post(f"/settings/technical/mail-servers/{relay.pk}/delete/")

    logged = kinds()
    for kind in (
        "sign_in_failed",
        "sign_in",
        "server_created",
        "server_changed",
        "secret_replaced",
        "connected",
        "disconnected",
        "apikey_created",
        "apikey_revoked",
        "keys_rotated",
        "server_deleted",
    ):
        assert kind in logged, (kind, logged)
    change = AuditEvent.objects.get(kind="server_changed", subject="Relay")
    assert change.fields == ["priority"] and change.actor == admin.username
    assert change.address == "192.0.2.7"
    assert AuditEvent.objects.get(kind="secret_replaced", subject="Relay").fields == ["password"]
    # Key rotation re-encrypts every secret: that is not a replaced secret.
    assert AuditEvent.objects.filter(kind="secret_replaced").count() == 1

    rows = json.dumps([e.as_dict() for e in AuditEvent.objects.all()])
    for secret in (
        PASSWORD,
        "wrong guess",
        SERVER_PASSWORD,
        "another-Secret-value-99",
        key.splitlines()[1],
        CLIENT_SECRET,
        "access-token-value",
        "refresh-token-value",
        new_key,
    ):
        assert secret not in rows


def test_a_value_cannot_be_passed_as_a_field_name(db: None) -> None:
    with pytest.raises(ValueError, match="field names"):
        record("server_changed", subject="Relay", fields=["password=hunter2"])
    with pytest.raises(ValueError, match="unknown"):
        record("made_up", subject="x")


def test_the_log_page_is_for_administrators_only(
    admin_client: Client, viewer_client: Client, stranger_client: Client
) -> None:
    record("server_deleted", subject="Old relay", actor="alice@example.com")
    page = admin_client.get("/settings/audit/")
    assert page.status_code == 200 and "Old relay" in page.content.decode()
    assert viewer_client.get("/settings/audit/").status_code == 403
    assert stranger_client.get("/settings/audit/").status_code == 302


def test_the_cli_prints_the_log_as_text_and_json(db: None) -> None:
    record("apikey_created", subject="erp (send)", actor="cli:ops")
    text = io.StringIO()
    call_command("audit", stdout=text)
    assert "API key created\terp (send)" in text.getvalue()
    as_json = io.StringIO()
    call_command("audit", "--json", stdout=as_json)
    (event,) = json.loads(as_json.getvalue())
    assert event["kind"] == "apikey_created" and event["actor"] == "cli:ops"


def test_a_cli_command_names_its_user_as_the_actor(db: None, settings: Any) -> None:
    from mailgate.audit.log import actor_scope

    with actor_scope("cli:ops"):
        APIKey.issue("relay")
    assert AuditEvent.objects.get(kind="apikey_created").actor == "cli:ops"
