"""POST/GET /api/v1/messages with a bearer API key."""

from __future__ import annotations

import base64
import json

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


def test_a_retry_is_the_same_request_whatever_the_json_key_order_and_spacing(api, server):
    body = {"from": "app@example.com", "to": ["a@example.org"], "subject": "S", "text": "once"}
    first = post(api, body, HTTP_IDEMPOTENCY_KEY="order-43")
    reordered = json.dumps(dict(reversed(body.items())), indent=2)
    second = api.post(
        "/api/v1/messages",
        reordered,
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="order-43",
    )
    assert (first.status_code, second.status_code) == (201, 200), second.content
    assert second.json()["id"] == first.json()["id"]
    assert OutgoingMessage.objects.count() == 1


@pytest.mark.parametrize(
    "change",
    [
        {"text": "twice"},
        {"to": ["b@example.org"]},
        {"subject": "another"},
        {"attachments": [{"filename": "a.txt", "content_base64": "aGk="}]},
    ],
)
def test_an_idempotency_key_reused_for_a_different_message_is_refused(api, server, change):
    body = {"from": "app@example.com", "to": ["a@example.org"], "text": "once"}
    first = post(api, body, HTTP_IDEMPOTENCY_KEY="order-42")
    response = post(api, {**body, **change}, HTTP_IDEMPOTENCY_KEY="order-42")
    assert response.status_code == 422, response.content
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert problem["title"] == "Idempotency-Key is already used"
    assert list(problem["errors"]) == ["Idempotency-Key"]
    assert problem["detail"].startswith("Idempotency-Key: 'order-42' was already used for message")
    assert "use a new key for a different message" in problem["detail"]
    assert [m.pk for m in OutgoingMessage.objects.all()] == [first.json()["id"]]
    assert b"once" in OutgoingMessage.objects.get().raw_bytes
    # The first request, repeated, still gets its message.
    again = post(api, body, HTTP_IDEMPOTENCY_KEY="order-42")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]


def test_a_raw_message_with_a_reused_key_must_repeat_the_bytes_and_the_envelope(api, server):
    raw = "From: app@example.com\r\nTo: b@example.org\r\nSubject: raw\r\n\r\nhello\r\n"
    first = post(api, {"raw": raw}, HTTP_IDEMPOTENCY_KEY="raw-1")
    assert post(api, {"raw": raw}, HTTP_IDEMPOTENCY_KEY="raw-1").status_code == 200
    other_bytes = post(api, {"raw": raw.replace("hello", "hullo")}, HTTP_IDEMPOTENCY_KEY="raw-1")
    other_envelope = post(api, {"raw": raw, "to": ["c@example.org"]}, HTTP_IDEMPOTENCY_KEY="raw-1")
    assert (first.status_code, other_bytes.status_code, other_envelope.status_code) == (
        201,
        422,
        422,
    )
    assert OutgoingMessage.objects.count() == 1


def test_idempotency_keys_are_per_api_key(api, server):
    _, other_secret = APIKey.issue("other application")
    other = Client(HTTP_AUTHORIZATION=f"Bearer {other_secret}")
    mine = post(
        api,
        {"from": "app@example.com", "to": ["a@example.org"], "text": "mine"},
        HTTP_IDEMPOTENCY_KEY="order-1",
    )
    theirs = post(
        other,
        {"from": "app@example.com", "to": ["z@example.org"], "text": "theirs"},
        HTTP_IDEMPOTENCY_KEY="order-1",
    )
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]
    assert OutgoingMessage.objects.count() == 2


def test_a_key_stored_before_fingerprints_accepts_any_retry(api, server):
    body = {"from": "app@example.com", "to": ["a@example.org"], "text": "once"}
    first = post(api, body, HTTP_IDEMPOTENCY_KEY="order-old").json()
    OutgoingMessage.objects.filter(pk=first["id"]).update(idempotency_fingerprint=None)
    again = post(api, {**body, "text": "changed"}, HTTP_IDEMPOTENCY_KEY="order-old")
    assert again.status_code == 200 and again.json()["id"] == first["id"]
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
