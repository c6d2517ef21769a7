"""The token lifecycle against the sandbox: reuse, refresh + rotation, revoked grants, expired secrets,
failing and slow token endpoints, idle refresh, disconnect."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from mailgate.oauth.models import Grant
from mailgate.oauth.tokens import get_fresh_access_token, refresh_idle_grants
from mailgate.providers.errors import (
    ClientCredentialsInvalid,
    ReconnectRequired,
    TokenError,
    TokenUnavailable,
)
from mailgate.providers.google import client as google_client
from mailgate.providers.http import TokenEndpointError
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer, ServerStatus
from tests.oauth.conftest import Browser, connect


@pytest.fixture
def connected(
    admin_client: Client, outlook_server: MailServer, browser: Browser, idp: Sandbox
) -> MailServer:
    assert connect(admin_client, browser, outlook_server, idp.demo["password"]).status_code == 302
    idp.control.reset_counters()
    outlook_server.refresh_from_db()
    return outlook_server


@pytest.fixture
def connected_own(
    admin_client: Client, own_server: MailServer, browser: Browser, idp: Sandbox
) -> MailServer:
    assert connect(admin_client, browser, own_server, idp.demo["password"]).status_code == 302
    idp.control.reset_counters()
    own_server.refresh_from_db()
    return own_server


def expire_access_token(server: MailServer, in_minutes: float = -1) -> None:
    Grant.objects.filter(server=server).update(
        access_expires_at=timezone.now() + dt.timedelta(minutes=in_minutes)
    )


def test_a_fresh_access_token_is_reused_without_a_token_request(
    connected: MailServer, idp: Sandbox
) -> None:
    first = get_fresh_access_token(connected)
    assert get_fresh_access_token(connected) == first
    assert idp.control.token_requests() == 0


def test_it_refreshes_five_minutes_before_expiry_and_stores_the_rotated_refresh_token(
    connected: MailServer, idp: Sandbox
) -> None:
    before = Grant.objects.get(server=connected)
    expire_access_token(connected, in_minutes=4)
    token = get_fresh_access_token(connected)
    after = Grant.objects.get(server=connected)
    assert token != before.access_token.reveal()
    assert after.refresh_token.reveal() != before.refresh_token.reveal()
    assert after.last_refresh_at is not None and after.refresh_count == 1
    assert after.access_expires_at > timezone.now() + dt.timedelta(minutes=50)
    assert idp.control.token_requests("refresh_token") == 1
    # Reused afterwards.
    assert get_fresh_access_token(connected) == token
    assert idp.control.token_requests() == 1


def test_a_refused_token_is_renewed_once_however_many_connections_were_refused_it(
    connected: MailServer, idp: Sandbox
) -> None:
    # Two connections opened with the same cached token are both refused (535): the first
    # renewal asks the identity provider, the second takes the token the first one stored.
    refused = get_fresh_access_token(connected)
    renewed = get_fresh_access_token(connected, refused=refused)
    assert renewed != refused
    assert get_fresh_access_token(connected, refused=refused) == renewed
    assert idp.control.token_requests("refresh_token") == 1
    # The new token refused in turn is renewed again.
    assert get_fresh_access_token(connected, refused=renewed) not in (refused, renewed)
    assert idp.control.token_requests("refresh_token") == 2


def test_a_revoked_grant_marks_the_server_reconnect_required(
    admin_client: Client,
    revocable_server: MailServer,
    fresh_user: dict[str, str],
    browser: Browser,
    idp: Sandbox,
) -> None:
    connected_own = revocable_server
    assert connect(admin_client, browser, connected_own, fresh_user["password"]).status_code == 302
    idp.control.revoke_grants(connected_own.username)
    expire_access_token(connected_own)
    with pytest.raises(ReconnectRequired) as caught:
        get_fresh_access_token(connected_own)
    assert caught.value.code == "AADSTS50173"
    assert "Connect your Outlook account" in caught.value.diagnosis
    connected_own.refresh_from_db()
    assert connected_own.status == ServerStatus.RECONNECT_REQUIRED
    assert "AADSTS50173" in connected_own.status_detail
    assert Grant.objects.get(server=connected_own).is_dead
    # Later callers are told at once, without asking the provider again.
    idp.control.reset_counters()
    with pytest.raises(ReconnectRequired):
        get_fresh_access_token(connected_own)
    assert idp.control.token_requests() == 0


def test_an_expired_secret_is_a_credentials_problem_and_a_new_secret_resumes(
    connected_own: MailServer, own_app: dict[str, str], idp: Sandbox
) -> None:
    idp.control.expire_secret(own_app["client_id"])
    expire_access_token(connected_own)
    with pytest.raises(ClientCredentialsInvalid) as caught:
        get_fresh_access_token(connected_own)
    assert caught.value.code == "AADSTS7000222"
    connected_own.refresh_from_db()
    assert connected_own.status == ServerStatus.FAILING
    assert "Client secret expired" in connected_own.status_detail
    grant = Grant.objects.get(server=connected_own)
    assert not grant.is_dead and grant.next_attempt_at is not None
    # Within the wait no request is made.
    idp.control.reset_counters()
    with pytest.raises(ClientCredentialsInvalid):
        get_fresh_access_token(connected_own)
    assert idp.control.token_requests() == 0
    # A new secret saved on the server ends the wait, and the grant works again.
    secret = idp.control.call("add_secret", client_id=own_app["client_id"])
    connected_own.client_secret = secret["value"]  # type: ignore[assignment]
    connected_own.save()
    assert get_fresh_access_token(connected_own)
    connected_own.refresh_from_db()
    assert connected_own.status == ServerStatus.TOKEN_VALID


@pytest.mark.parametrize("fail", [500, 503])
def test_a_failing_token_endpoint_is_retried_and_never_kills_the_grant(
    connected: MailServer, idp: Sandbox, fail: int
) -> None:
    idp.control.set_faults(fail=fail)
    expire_access_token(connected)
    with pytest.raises(TokenUnavailable):
        get_fresh_access_token(connected)
    assert idp.control.token_requests() == 2  # the call and one retry
    grant = Grant.objects.get(server=connected)
    assert not grant.is_dead and grant.failures == 1
    assert grant.next_attempt_at is not None and grant.next_attempt_at > timezone.now()
    connected.refresh_from_db()
    assert connected.status == ServerStatus.TOKEN_VALID
    # Back-off: no request until the next attempt is due.
    with pytest.raises(TokenUnavailable):
        get_fresh_access_token(connected)
    assert idp.control.token_requests() == 2
    idp.control.clear_faults()
    Grant.objects.filter(server=connected).update(next_attempt_at=timezone.now())
    assert get_fresh_access_token(connected)
    assert Grant.objects.get(server=connected).failures == 0


def test_a_slow_token_endpoint_times_out_as_transient(
    connected: MailServer, idp: Sandbox, settings: pytest.FixtureRequest
) -> None:
    settings.MAILGATE_HTTP_TIMEOUT = 0.5  # type: ignore[attr-defined]
    idp.control.set_faults(delay=2)
    expire_access_token(connected)
    with pytest.raises(TokenUnavailable) as caught:
        get_fresh_access_token(connected)
    assert "did not answer" in str(caught.value)
    assert not Grant.objects.get(server=connected).is_dead


def test_a_flapping_token_endpoint_succeeds_on_the_retry(
    connected: MailServer, idp: Sandbox
) -> None:
    idp.control.set_faults(flap=True)
    expire_access_token(connected)
    assert get_fresh_access_token(connected)
    assert Grant.objects.get(server=connected).failures == 0


def test_a_still_valid_token_is_used_while_the_endpoint_is_down(
    connected: MailServer, idp: Sandbox
) -> None:
    current = get_fresh_access_token(connected)
    idp.control.set_faults(fail=503)
    expire_access_token(connected, in_minutes=3)  # inside the 5-minute margin, not expired
    with pytest.raises(TokenUnavailable):
        get_fresh_access_token(connected)
    # Now in back-off with a token that has not expired yet: it is handed out.
    assert get_fresh_access_token(connected) == current


def test_the_background_step_refreshes_idle_grants_only(
    connected: MailServer, idp: Sandbox
) -> None:
    assert refresh_idle_grants() is False
    assert idp.control.token_requests() == 0
    Grant.objects.filter(server=connected).update(
        last_success_at=timezone.now() - dt.timedelta(hours=13)
    )
    assert refresh_idle_grants() is True
    assert idp.control.token_requests("refresh_token") == 1
    grant = Grant.objects.get(server=connected)
    assert grant.last_success_at > timezone.now() - dt.timedelta(minutes=1)


def test_token_valid_needs_a_recent_success(connected: MailServer) -> None:
    grant = Grant.objects.get(server=connected)
    assert grant.is_token_valid()
    assert not grant.is_token_valid(timezone.now() + dt.timedelta(hours=25))


def test_an_unconnected_server_asks_for_a_connect(outlook_server: MailServer) -> None:
    with pytest.raises(ReconnectRequired) as caught:
        get_fresh_access_token(outlook_server)
    assert "Connect your Outlook account" in caught.value.diagnosis


def test_a_password_server_has_no_token(db: None) -> None:
    server = MailServer.objects.create(name="pw", auth_method="password", username="a@b.example")
    with pytest.raises(TokenError):
        get_fresh_access_token(server)


def test_disconnect_deletes_the_tokens(admin_client: Client, connected: MailServer) -> None:
    response = admin_client.post(f"/oauth/servers/{connected.pk}/disconnect", follow=True)
    assert "Disconnected" in response.content.decode()
    assert not Grant.objects.filter(server=connected).exists()
    connected.refresh_from_db()
    assert connected.status == ServerStatus.NOT_CONNECTED


def test_disconnecting_gmail_revokes_the_grant_at_google(
    admin_client: Client, gmail_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    assert (
        connect(admin_client, browser, gmail_server, idp.demo["google_password"]).status_code == 302
    )
    refresh_token = Grant.objects.get(server=gmail_server).refresh_token.reveal()
    admin_client.post(f"/oauth/servers/{gmail_server.pk}/disconnect")
    assert not Grant.objects.filter(server=gmail_server).exists()
    with pytest.raises(TokenEndpointError) as caught:
        google_client.refresh(
            idp.google_token_url,
            client_id=gmail_server.client_id,
            client_secret=idp.demo["google_client_secret"],
            refresh_token=refresh_token,
        )
    assert caught.value.error == "invalid_grant"


def test_viewers_cannot_disconnect(viewer_client: Client, connected: MailServer) -> None:
    assert viewer_client.post(f"/oauth/servers/{connected.pk}/disconnect").status_code == 403
    assert Grant.objects.filter(server=connected).exists()


def test_a_revoked_gmail_grant_needs_a_reconnect(
    admin_client: Client, gmail_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    assert (
        connect(admin_client, browser, gmail_server, idp.demo["google_password"]).status_code == 302
    )
    idp.control.revoke_grants(gmail_server.username)
    expire_access_token(gmail_server)
    with pytest.raises(ReconnectRequired) as caught:
        get_fresh_access_token(gmail_server)
    assert caught.value.code == "invalid_grant"
    gmail_server.refresh_from_db()
    assert gmail_server.status == ServerStatus.RECONNECT_REQUIRED
