"""Addresses whose local part is not ASCII (RFC 6531/6532) at the door: the API, enqueue() and a raw
message accept them (syntax only: corp.local and *.test are valid domains), the message is written
with UTF-8 headers, and bad addresses are still refused naming the field."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from mailgate.keys.models import APIKey
from mailgate.outbox import enqueue
from mailgate.outbox.compose import InvalidMessage, MessageSpec, build, parse_mailbox
from mailgate.outbox.models import OutgoingMessage
from mailgate.servers.models import MailServer


@pytest.fixture
def corp(make_server: Callable[..., MailServer]) -> MailServer:
    return make_server(name="corp", from_filter="corp.local")


@pytest.fixture
def api(db: None) -> Client:
    _, secret = APIKey.issue("erp", scope="send")
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("jörg@corp.local", "jörg@corp.local"),
        ("Jörg Müller <jörg@corp.local>", "jörg@corp.local"),
        ("δοκιμή@host.test", "δοκιμή@host.test"),
        ("用户@bücher.test", "用户@xn--bcher-kva.test"),  # the domain in its ASCII form
        ("jo\u0308rg@corp.local", "jörg@corp.local"),  # NFC
        ("mailhost@corp.local", "mailhost@corp.local"),
    ],
)
def test_a_utf8_local_part_is_a_valid_address(value: str, address: str) -> None:
    assert parse_mailbox("to", value).address == address


@pytest.mark.parametrize("value", ["jörg@corp.invalid", "jö rg@corp.local", "jörg@", "jörg"])
def test_a_bad_utf8_address_is_refused_naming_the_field(value: str) -> None:
    with pytest.raises(InvalidMessage) as refused:
        parse_mailbox("to[0]", value)
    assert list(refused.value.errors) == ["to[0]"]


def test_the_message_is_written_with_utf8_headers_and_ascii_ones_stay_rfc_2047() -> None:
    built = build(
        MessageSpec(
            from_address="Jörg <jörg@corp.local>",
            to=["ünal@host.test"],
            subject="Grüße",
            text="Hallo.",
        )
    )
    head = built.raw.split(b"\r\n\r\n", 1)[0]
    assert "From: Jörg <jörg@corp.local>".encode() in head
    assert "Subject: Grüße".encode() in head
    parsed = email.message_from_bytes(built.raw, policy=email.policy.default)
    assert str(parsed["To"]) == "ünal@host.test"
    plain = build(MessageSpec(from_address="jorg@corp.local", to=["a@host.test"], subject="Grüße"))
    assert plain.raw.isascii() and b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=" in plain.raw


def post(api: Client, body: dict[str, Any]) -> Any:
    return api.post("/api/v1/messages", body, content_type="application/json")


def test_the_api_queues_utf8_addresses(api: Client, corp: MailServer) -> None:
    response = post(
        api,
        {
            "from": "Jörg <jörg@corp.local>",
            "to": ["ünal@host.test", "Ann <ann@corp.local>"],
            "cc": "δοκιμή@example.org",
            "subject": "Grüße",
            "text": "Hallo.",
        },
    )
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["from"] == "jörg@corp.local" and data["to"] == ["ünal@host.test", "ann@corp.local"]
    queued = OutgoingMessage.objects.get(pk=data["id"])
    assert queued.server == corp and queued.cc == ["δοκιμή@example.org"]
    assert "From: Jörg <jörg@corp.local>".encode() in queued.raw_bytes


def test_the_api_refuses_a_bad_utf8_address_naming_it(api: Client, corp: MailServer) -> None:
    response = post(api, {"from": "jörg@corp.local", "to": ["ünal@host.invalid"], "text": "x"})
    assert response.status_code == 422, response.content
    assert "to[0]" in response.json()["errors"]


def test_a_raw_message_with_utf8_headers_keeps_them(corp: MailServer) -> None:
    raw = "From: Jörg <jörg@corp.local>\r\nTo: ünal@host.test\r\nSubject: Grüße\r\n\r\nHallo.\r\n"
    queued = enqueue(raw=raw.encode(), from_address="jörg@corp.local", to=["ünal@host.test"])
    assert queued.from_address == "jörg@corp.local" and queued.to == ["ünal@host.test"]
    # Message-ID and Date are put before the message, which is kept byte for byte.
    assert queued.raw_bytes.startswith(b"Message-ID: <")
    assert queued.raw_bytes.endswith(raw.encode()) and b"\r\nDate: " in queued.raw_bytes


def test_django_send_mail_writes_utf8_address_headers_not_encoded_words(
    corp: MailServer, settings: Any
) -> None:
    """Django encodes a non-ASCII local part as an RFC 2047 word, which is no address; the backend
    writes such a message's address headers in UTF-8 (RFC 6532)."""
    from django.core import mail

    settings.EMAIL_BACKEND = "mailgate.outbox.backends.EmailBackend"
    message = mail.EmailMessage(
        "Grüße", "Body", "Jörg <jörg@corp.local>", ["ünal@host.test"], cc=["ann@host.test"]
    )
    assert message.send() == 1
    queued = OutgoingMessage.objects.get()
    assert (queued.from_address, queued.to, queued.cc) == (
        "jörg@corp.local",
        ["ünal@host.test"],
        ["ann@host.test"],
    )
    head = queued.raw_bytes.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert "From: Jörg <jörg@corp.local>".encode() in head
    assert "To: ünal@host.test".encode() in head and b"Cc: ann@host.test" in head
    assert b"=?utf-8?b?asO2cmc=?=@" not in queued.raw_bytes
    assert [line for line in head if line.lower().startswith(b"from:")] == [
        "From: Jörg <jörg@corp.local>".encode()
    ]
    parsed = email.message_from_bytes(queued.raw_bytes, policy=email.policy.default)
    assert parsed["Subject"] == "Grüße" and parsed.get_content().strip() == "Body"
