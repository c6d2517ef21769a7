"""Attack 2: sending as someone else by naming a server explicitly, through a password server, or
in a raw message's From header. Attack 11's other side: internal domains are valid addresses."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.test import Client

from mailgate.api.models import APIKey
from mailgate.outbox.compose import InvalidMessage
from mailgate.outbox.models import OutgoingMessage
from mailgate.outbox.submit import enqueue


@pytest.fixture
def api(db: None) -> Client:
    _, secret = APIKey.issue("attacker")
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


@pytest.fixture
def billing(make_server: Any) -> Any:
    return make_server(name="billing", from_filter="billing@example.com")


def test_naming_a_server_does_not_escape_its_from_filter_through_the_api(
    api: Client, billing: Any
) -> None:
    body = {"from": "ceo@example.com", "to": ["a@example.org"], "text": "x", "server": "billing"}
    response = api.post("/api/v1/messages", body, content_type="application/json")
    assert response.status_code == 422, response.content
    assert "From Filter" in response.json()["errors"]["from"]
    assert OutgoingMessage.objects.count() == 0


def test_naming_a_server_does_not_escape_its_from_filter_through_the_cli(billing: Any) -> None:
    argv = ["--from", "ceo@example.com", "--to", "a@example.org", "--server", "billing"]
    with pytest.raises(CommandError) as caught:
        call_command("send", *argv, "--body", "x", stdout=StringIO())
    assert "--from" in str(caught.value)
    assert OutgoingMessage.objects.count() == 0


def test_a_raw_messages_from_header_is_bound_too(billing: Any) -> None:
    raw = b"From: ceo@example.com\r\nTo: a@example.org\r\nSubject: s\r\n\r\nhi\r\n"
    with pytest.raises(InvalidMessage) as caught:
        enqueue(raw=raw, from_address="billing@example.com")
    assert "from" in caught.value.errors
    assert OutgoingMessage.objects.count() == 0


def test_the_django_backend_cannot_put_another_from_header_in_the_message(
    billing: Any, settings: Any
) -> None:
    settings.EMAIL_BACKEND = "mailgate.outbox.backends.EmailBackend"
    message = mail.EmailMessage(
        "s", "hi", "billing@example.com", ["a@example.org"], headers={"From": "ceo@example.com"}
    )
    with pytest.raises(InvalidMessage):
        message.send()
    assert OutgoingMessage.objects.count() == 0


def test_a_password_mailbox_may_send_only_as_itself_or_its_send_as_addresses(
    make_server: Any,
) -> None:
    make_server(name="box", username="clerk@example.com", send_as="team@example.com")
    with pytest.raises(InvalidMessage) as caught:
        enqueue(from_address="ceo@example.com", to="a@example.org", text="x")
    assert "may not send as ceo@example.com" in caught.value.errors["from"]
    assert enqueue(from_address="clerk@example.com", to="a@example.org", text="x").pk
    assert enqueue(from_address="team@example.com", to="a@example.org", text="x").pk


def test_a_relay_account_without_an_address_is_bound_by_its_from_filter_alone(
    make_server: Any,
) -> None:
    make_server(name="relay", username="relay-user", from_filter="example.com")
    assert enqueue(from_address="anyone@example.com", to="a@example.org", text="x").pk


@pytest.mark.parametrize(
    "address", ["clerk@corp.local", "clerk@mail.internal", "clerk@contoso.test", "clerk@mailhost"]
)
def test_an_internal_domain_is_a_valid_sender_and_recipient(make_server: Any, address: str) -> None:
    make_server(name="internal", username=address)
    message = enqueue(from_address=address, to=address, text="x")
    assert message.from_address == address and message.to == [address]
    out = StringIO()
    call_command("send", "--from", address, "--to", address, "--body", "x", stdout=out)
    assert OutgoingMessage.objects.count() == 2


def test_a_password_relays_from_filter_is_its_permission(make_server: Any) -> None:
    make_server(name="relay", username="app@example.com", from_filter="erp@example.com")
    assert enqueue(from_address="erp@example.com", to="a@example.org", text="x").pk
    with pytest.raises(InvalidMessage):
        enqueue(from_address="ceo@example.com", to="a@example.org", text="x", server="relay")
