"""POST/GET /api/v1/messages with a bearer API key."""

from __future__ import annotations

import base64

import pytest
from django.test import Client

from mailgate.api.models import APIKey
from mailgate.outbox.models import OutgoingMessage, Status


@pytest.fixture
def api(db):
    _, secret = APIKey.issue("tests")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def server(make_server):
    return make_server(name="main")


def post(api, body, **headers):
    return api.post("/api/v1/messages", body, content_type="application/json", **headers)


def test_it_queues_a_message_from_json_fields(api, server):
    response = post(
        api,
        {
            "from": "app@example.com",
            "to": ["a@example.org"],
            "subject": "Invoice",
            "text": "see attached",
            "attachments": [
                {
                    "filename": "a.txt",
                    "content_type": "text/plain",
                    "content_base64": base64.b64encode(b"hi").decode(),
                }
            ],
        },
    )
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["status"] == "queued"
    assert data["server"] == "main"
    assert data["from"] == "app@example.com"
    assert data["message_id"].startswith("<") and data["message_id"].endswith("@example.com>")
    message = OutgoingMessage.objects.get(pk=data["id"])
    assert b'filename="a.txt"' in message.raw_bytes


def test_it_queues_a_raw_message(api, server):
    raw = "From: app@example.com\r\nTo: b@example.org\r\nSubject: raw\r\n\r\nhello\r\n"
    response = post(api, {"raw": raw})
    assert response.status_code == 201, response.content
    assert response.json()["to"] == ["b@example.org"]


def test_an_idempotency_key_returns_the_first_message(api, server):
    body = {"from": "app@example.com", "to": ["a@example.org"], "text": "once"}
    first = post(api, body, HTTP_IDEMPOTENCY_KEY="order-42")
    second = post(api, body, HTTP_IDEMPOTENCY_KEY="order-42")
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert OutgoingMessage.objects.count() == 1


def test_bad_input_is_refused_with_the_field_named(api, server):
    response = post(api, {"from": "app@example.com", "to": ["not an address"], "text": "x"})
    assert response.status_code == 400
    assert "to[0]" in response.json()["errors"]
    response = post(
        api,
        {"from": "app@example.com", "to": ["a@example.org"], "subject": "a\r\nBcc: x@evil.example"},
    )
    assert response.status_code == 400
    assert "subject" in response.json()["errors"]
    response = post(
        api,
        {
            "from": "app@example.com",
            "to": ["a@example.org"],
            "attachments": [{"filename": "a", "content_base64": "%%%"}],
        },
    )
    assert response.json()["errors"] == {"attachments[0].content_base64": "is not valid base64"}
    assert OutgoingMessage.objects.count() == 0


def test_get_returns_a_message_with_its_attempts_and_list_filters_by_status(api, server):
    created = post(api, {"from": "app@example.com", "to": ["a@example.org"], "text": "x"}).json()
    OutgoingMessage.objects.filter(pk=created["id"]).update(status=Status.FAILED)
    detail = api.get(f"/api/v1/messages/{created['id']}")
    assert detail.status_code == 200
    assert detail.json()["attempt_log"] == []
    assert detail.json()["status"] == "failed"
    assert [m["id"] for m in api.get("/api/v1/messages?status=failed").json()] == [created["id"]]
    assert api.get("/api/v1/messages?status=sent").json() == []
    assert api.get("/api/v1/messages/999999").status_code == 404


def test_the_api_needs_a_key(db, server):
    response = Client().post("/api/v1/messages", {}, content_type="application/json")
    assert response.status_code == 401
