"""The RFC 7662 introspection endpoint Dovecot asks, and the MailPolicy over the sandbox state."""

from __future__ import annotations

import httpx
import pytest

from mailgate.sandbox.server import Sandbox
from mailgate.sandbox.tokens import InvalidToken

pytestmark = pytest.mark.nodb


def _token(
    sandbox: Sandbox,
    scp: str,
    *,
    upn: str = "alex@contoso.example",
    aud: str = "https://outlook.office.com",
    ttl: int = 3600,
) -> str:
    now = int(sandbox.state.now())  # type: ignore[union-attr]
    claims = {
        "aud": aud,
        "scp": scp,
        "upn": upn,
        "exp": now + ttl,
        "iat": now,
        "appid": "app",
        "oid": "o",
    }
    return sandbox.state.signing_key.sign(claims)  # type: ignore[union-attr]


def _introspect(sandbox: Sandbox, service: str, token: str) -> dict:
    response = httpx.post(f"{sandbox.http_url}/sandbox/introspect/{service}", data={"token": token})
    assert response.status_code == 200
    return response.json()


def test_an_imap_token_is_active_for_imap_with_the_mailbox_as_username(sandbox: Sandbox) -> None:
    body = _introspect(sandbox, "imap", _token(sandbox, "IMAP.AccessAsUser.All SMTP.Send"))
    assert body["active"] is True
    assert body["username"] == "alex@contoso.example"
    assert body["client_id"] == "app"
    assert "IMAP.AccessAsUser.All" in body["scope"].split()


def test_an_imap_token_is_not_active_for_pop3(sandbox: Sandbox) -> None:
    assert _introspect(sandbox, "pop3", _token(sandbox, "IMAP.AccessAsUser.All")) == {
        "active": False
    }
    assert _introspect(sandbox, "pop3", _token(sandbox, "POP.AccessAsUser.All"))["active"] is True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": -10},
        {"aud": "https://graph.microsoft.com"},
        {"upn": "nobody@contoso.example"},
    ],
    ids=["expired", "graph-audience", "unknown-user"],
)
def test_bad_tokens_are_not_active(sandbox: Sandbox, kwargs: dict) -> None:
    assert _introspect(sandbox, "imap", _token(sandbox, "IMAP.AccessAsUser.All", **kwargs)) == {
        "active": False
    }


def test_garbage_and_foreign_tokens_are_not_active(sandbox: Sandbox) -> None:
    assert _introspect(sandbox, "imap", "not-a-token") == {"active": False}
    assert _introspect(sandbox, "imap", "ya29.unknown") == {"active": False}


def test_an_advanced_clock_expires_tokens(sandbox: Sandbox) -> None:
    token = _token(sandbox, "IMAP.AccessAsUser.All", ttl=600)
    assert _introspect(sandbox, "imap", token)["active"] is True
    sandbox.control.advance_clock(601)
    assert _introspect(sandbox, "imap", token) == {"active": False}
    with pytest.raises(InvalidToken):
        sandbox.state.verify_access_token(token)  # type: ignore[union-attr]


def test_mail_policy_answers_from_the_state(sandbox: Sandbox) -> None:
    policy = sandbox.state
    assert policy is not None
    assert policy.mailbox_exists("Alex@Contoso.example")
    assert not policy.mailbox_exists("ghost@contoso.example")
    assert policy.smtp_auth_disabled("alex@contoso.example") is None
    sandbox.control.call("update_tenant", tenant="contoso.example", smtp_auth_disabled=True)
    assert policy.smtp_auth_disabled("alex@contoso.example") == "Tenant"
    sandbox.control.call("update_user", user="alex@contoso.example", smtp_auth_disabled=False)
    assert policy.smtp_auth_disabled("alex@contoso.example") is None
    sandbox.control.call("update_user", user="megan@contoso.example", smtp_auth_disabled=True)
    assert policy.smtp_auth_disabled("megan@contoso.example") == "Mailbox"
    assert not policy.may_send_as("alex@contoso.example", "info@contoso.example")
    sandbox.control.call(
        "grant_send_as", mailbox="info@contoso.example", trustee="alex@contoso.example"
    )
    assert policy.may_send_as("alex@contoso.example", "info@contoso.example")
    assert policy.submission_limits("alex@contoso.example").per_minute == 30
    sandbox.control.call("set_limits", user="alex@contoso.example", lift=True)
    assert policy.submission_limits("alex@contoso.example").per_minute > 10**6
    assert policy.token_service({"upn": "Alex@Contoso.Example"}) == "alex@contoso.example"
