"""Attack 5: keeping another account's tokens by editing the server, connecting without an id_token,
with a forged id_token, or with Entra's unverified `email` claim. Attack 6: reading a secret back
from the page of a form with an error."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client
from django.views.debug import SafeExceptionReporterFilter

from mailgate.oauth import tokens
from mailgate.oauth.callback import SignInAnswer, SignInRefused
from mailgate.oauth.models import Grant
from mailgate.providers.base import TokenSet
from mailgate.sandbox.server import Sandbox
from mailgate.sandbox.tokens import SigningKey
from mailgate.servers.models import MailServer, ServerStatus
from tests.servers.conftest import make_certificate, password_data


def connected(server: MailServer) -> MailServer:
    tokens.store_grant(
        server,
        tokens=TokenSet("access", 3600, refresh_token="refresh"),
        account=server.username,
        scopes=[],
    )
    server.refresh_from_db()
    assert server.status == ServerStatus.TOKEN_VALID
    return server


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "ceo@contoso.example"),
        ("client_id", "99999999-2222-3333-4444-555555555555"),
        ("tenant", "fabrikam.example"),
        ("cloud", "usgov"),
    ],
)
def test_an_edit_of_whose_grant_it_is_discards_the_tokens(
    outlook_server: MailServer, field: str, value: str
) -> None:
    server = connected(outlook_server)
    setattr(server, field, value)
    server.save()
    server.refresh_from_db()
    assert not Grant.objects.filter(server=server).exists()
    assert server.status == ServerStatus.RECONNECT_REQUIRED
    assert "connect the account again" in server.status_detail


def test_switching_the_method_discards_the_tokens(outlook_server: MailServer) -> None:
    server = connected(outlook_server)
    server.auth_method = "password"
    server.save()
    assert not Grant.objects.filter(server=server).exists()


def test_other_edits_keep_the_tokens(outlook_server: MailServer) -> None:
    server = connected(outlook_server)
    server.priority = 5
    server.from_filter = "contoso.example"
    server.save()
    server.refresh_from_db()
    assert Grant.objects.filter(server=server).exists()
    assert server.status == ServerStatus.TOKEN_VALID


def _check(server: MailServer, id_token: str) -> str:
    flow = tokens.flow_for(server)
    tokenset = TokenSet("access", 3600, refresh_token="refresh", id_token=id_token)
    return SignInAnswer.check_account(flow, tokenset, server)


def _signed(key_dir: Any, server: MailServer, **claims: object) -> str:
    now = int(time.time())
    return SigningKey(key_dir).sign(
        {"iat": now, "nbf": now, "exp": now + 3600, "aud": server.client_id, **claims}
    )


def test_a_sign_in_without_an_id_token_is_refused(outlook_server: MailServer) -> None:
    with pytest.raises(SignInRefused, match="did not say who signed in"):
        _check(outlook_server, "")


def test_a_forged_id_token_is_refused_when_the_keys_could_be_fetched(
    outlook_server: MailServer, tmp_path: Any
) -> None:
    forged = _signed(tmp_path, outlook_server, preferred_username=outlook_server.username)
    with pytest.raises(SignInRefused) as caught:
        _check(outlook_server, forged)
    assert "signature does not verify" in caught.value.explanation


def test_entras_unverified_email_claim_does_not_name_the_account(
    outlook_server: MailServer, idp: Sandbox
) -> None:
    token = _signed(
        idp.state_dir,
        outlook_server,
        preferred_username="mallory@fabrikam.example",
        email=outlook_server.username,
    )
    with pytest.raises(SignInRefused) as caught:
        _check(outlook_server, token)
    assert caught.value.title == "Signed in with another account"
    genuine = _signed(idp.state_dir, outlook_server, upn=outlook_server.username)
    assert _check(outlook_server, genuine) == ""


def test_a_private_key_is_not_sent_back_when_the_form_has_an_error(admin_client: Client) -> None:
    cert, key = make_certificate()
    data = password_data(
        name="Cert",
        auth_method="certificate",
        password="",
        certificate=cert,
        private_key=key,
        smtp_port="not a port",
    )
    response = admin_client.post("/settings/technical/mail-servers/add/", data)
    assert response.status_code == 200
    page = response.content.decode()
    assert key.splitlines()[1] not in page
    assert "Private Key" in page and "not sent back" in page
    assert not MailServer.objects.exists()


def test_an_error_report_of_a_server_form_shows_no_secret(admin_client: Client) -> None:
    data = password_data(name="Relay", password="hunter2-very-secret", smtp_port="not a port")
    response = admin_client.post("/settings/technical/mail-servers/add/", data)
    reported = SafeExceptionReporterFilter().get_post_parameters(response.wsgi_request)
    assert reported["password"] != "hunter2-very-secret"
    assert reported["name"] == "Relay"
