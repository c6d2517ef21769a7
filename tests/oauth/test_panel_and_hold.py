"""The connection panel per role and state, and held mail resuming once the server is reconnected."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import threading
from typing import Any

from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from mailgate.oauth.models import Grant
from mailgate.outbox import enqueue
from mailgate.outbox.hold import hold_server, release_server
from mailgate.outbox.models import OutgoingMessage
from mailgate.outbox.worker import Deliverer
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer, ServerStatus
from tests.oauth.conftest import Browser, connect


def edit_page(client: Client, server: MailServer) -> str:
    return client.get(f"/settings/technical/mail-servers/{server.pk}/").content.decode()


def make_grant(server: MailServer, **fields: object) -> Grant:
    values: dict[str, object] = {
        "server": server,
        "provider": "microsoft",
        "account": server.username,
        "client_id": server.client_id,
        "scopes": "offline_access https://outlook.office.com/SMTP.Send",
        "refresh_token": "secret-refresh-token-value",
        "access_token": "secret-access-token-value",
        "access_expires_at": timezone.now() + dt.timedelta(hours=1),
        "last_success_at": timezone.now(),
    }
    values.update(fields)
    return Grant.objects.create(**values)


def test_a_not_connected_server_offers_connect_to_admins(
    admin_client: Client, outlook_server: MailServer
) -> None:
    page = edit_page(admin_client, outlook_server)
    assert "Not connected" in page
    assert "Connect your Outlook account" in page
    assert "Test Connection" in page
    assert ">Disconnect<" not in page


def test_viewers_see_the_status_but_no_buttons(
    viewer_client: Client, outlook_server: MailServer
) -> None:
    make_grant(outlook_server)
    page = edit_page(viewer_client, outlook_server)
    assert page.count("Token Valid") == 1
    assert "Connect your Outlook account" not in page
    assert "Test Connection" not in page and ">Disconnect<" not in page


def test_the_panel_shows_the_grant_but_never_its_tokens(
    admin_client: Client, outlook_server: MailServer
) -> None:
    make_grant(outlook_server)
    page = edit_page(admin_client, outlook_server)
    assert "Token Valid" in page and "alex@contoso.example" in page
    assert "https://outlook.office.com/SMTP.Send" in page
    assert "Access token expires" in page and "Last refresh" in page
    assert "secret-refresh-token-value" not in page and "secret-access-token-value" not in page


def test_a_dead_grant_shows_reconnect_required_with_the_diagnosis(
    admin_client: Client, outlook_server: MailServer
) -> None:
    make_grant(
        outlook_server,
        is_dead=True,
        last_error="Grant revoked (AADSTS50173)",
        last_error_diagnosis="Press Connect your Outlook account and sign in again.",
    )
    page = edit_page(admin_client, outlook_server)
    assert "Reconnect required" in page
    assert "Grant revoked (AADSTS50173)" in page
    assert "Token Valid" not in page


def test_an_old_success_is_not_token_valid(
    admin_client: Client, outlook_server: MailServer
) -> None:
    make_grant(outlook_server, last_success_at=timezone.now() - dt.timedelta(days=2))
    page = edit_page(admin_client, outlook_server)
    assert "Token Valid" not in page and "Token not refreshed recently" in page


def test_password_servers_get_only_the_test_button(admin_client: Client, db: None) -> None:
    server = MailServer.objects.create(
        name="pw", auth_method="password", username="a@b.example", smtp_host="127.0.0.1"
    )
    page = edit_page(admin_client, server)
    assert "Test Connection" in page and "Connect your" not in page


def test_reconnecting_releases_the_held_queue(
    admin_client: Client,
    outlook_server: MailServer,
    browser: Browser,
    idp: Sandbox,
    django_capture_on_commit_callbacks: Any,
) -> None:
    message = enqueue(
        from_address=outlook_server.username,
        to="someone@example.org",
        subject="Invoice",
        text="Hello",
        server=outlook_server,
    )
    hold_server(outlook_server, "Grant revoked (AADSTS50173)")
    MailServer.objects.filter(pk=outlook_server.pk).update(status=ServerStatus.RECONNECT_REQUIRED)
    assert OutgoingMessage.objects.get(pk=message.pk).status == "held"
    with django_capture_on_commit_callbacks(execute=True):
        response = connect(admin_client, browser, outlook_server, idp.demo["password"])
    assert response.status_code == 302
    outlook_server.refresh_from_db()
    assert outlook_server.hold_reason == "" and outlook_server.status == ServerStatus.TOKEN_VALID
    assert OutgoingMessage.objects.get(pk=message.pk).status == "queued"


SERVERS = "/settings/technical/mail-servers/"


def doctor_output() -> str:
    out = io.StringIO()
    with contextlib.suppress(CommandError):  # it exits 1 when something needs action
        call_command("doctor", stdout=out)
    return out.getvalue()


def pages(client: Client, server: MailServer) -> dict[str, str]:
    """The server page, the list, the dashboard and `doctor`: every place a status is shown."""
    return {
        "page": edit_page(client, server),
        "list": client.get(SERVERS).content.decode(),
        "dashboard": client.get("/").content.decode(),
        "doctor": doctor_output(),
    }


def deliver_until_idle() -> None:
    deliverer = Deliverer()
    stop = threading.Event()
    try:
        for _ in range(10):
            if not deliverer.step(stop):
                return
    finally:
        deliverer.close_all()
    raise AssertionError("the worker kept finding work")


def test_a_535_on_a_cached_token_forces_one_refresh_and_invalid_grant_is_reconnect_required(
    admin_client: Client,
    gmail_server: MailServer,
    browser: Browser,
    idp: Sandbox,
    caplog: Any,
) -> None:
    password = idp.demo["google_password"]
    assert connect(admin_client, browser, gmail_server, password).status_code == 302
    # "Remove access" at Google: the cached access token dies with the grant, unexpired.
    idp.control.revoke_grants(gmail_server.username)
    idp.control.reset_counters()
    for i in range(2):
        enqueue(from_address=gmail_server.username, to=[f"r{i}@example.org"], text="hi")
    with caplog.at_level(logging.WARNING, logger="mailgate.outbox"):
        deliver_until_idle()
    # The SMTP server refused the cached token (535); exactly one refresh answered invalid_grant.
    counters = idp.control.counters()
    assert counters["google_token_requests_refresh_token"] == 1
    assert counters["google_invalid_grant"] == 1
    gmail_server.refresh_from_db()
    assert gmail_server.status == ServerStatus.RECONNECT_REQUIRED
    assert gmail_server.held_at is not None
    assert set(OutgoingMessage.objects.values_list("status", flat=True)) == {"held"}
    assert "(2 messages held)" in caplog.text
    for where, text in pages(admin_client, gmail_server).items():
        assert "Reconnect required" in text, where
        assert "Token Valid" not in text, where


def test_a_held_server_is_failing_not_token_valid_until_released(
    admin_client: Client, outlook_server: MailServer, db: None
) -> None:
    make_grant(outlook_server)
    MailServer.objects.filter(pk=outlook_server.pk).update(status=ServerStatus.TOKEN_VALID)
    outlook_server.refresh_from_db()
    reason = "The mailbox may not use SMTP AUTH. Fix: enable Authenticated SMTP for it."
    hold_server(outlook_server, reason)
    assert outlook_server.status == ServerStatus.FAILING
    shown = pages(admin_client, outlook_server)
    for where, text in shown.items():
        assert "Token Valid" not in text, where
        assert "Failing" in text or "held" in text, where
    assert all("SMTP AUTH" in shown[where] for where in ("page", "dashboard", "doctor"))
    release_server(outlook_server)
    assert outlook_server.status == ServerStatus.TOKEN_VALID
    assert "Token Valid" in edit_page(admin_client, outlook_server)


def test_disconnect_forgets_the_last_connection_test(
    admin_client: Client, gmail_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    assert (
        connect(admin_client, browser, gmail_server, idp.demo["google_password"]).status_code == 302
    )
    MailServer.objects.filter(pk=gmail_server.pk).update(
        last_test_at=timezone.now(), last_test_ok=True, last_test_summary="[OK] all steps"
    )
    assert "Connection test succeeded" in doctor_output()
    admin_client.post(f"/oauth/servers/{gmail_server.pk}/disconnect")
    gmail_server.refresh_from_db()
    assert (gmail_server.last_test_at, gmail_server.last_test_ok) == (None, None)
    for where, text in pages(admin_client, gmail_server).items():
        assert "Connection test succeeded" not in text, where
        assert "never been connected" not in text, where
    assert "Not connected" in pages(admin_client, gmail_server)["dashboard"]
