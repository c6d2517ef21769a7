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
    _, secret = APIKey.issue("tests", scope="admin")
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
    _, other_secret = APIKey.issue("other application", scope="admin")
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
    assert response.status_code == 422
    assert "to[0]" in response.json()["errors"]
    response = post(
        api,
        {"from": "app@example.com", "to": ["a@example.org"], "subject": "a\r\nBcc: x@evil.example"},
    )
    assert response.status_code == 422
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


def post_batch(api, messages):
    return api.post(
        "/api/v1/messages/batch", {"messages": messages}, content_type="application/json"
    )


def test_a_batch_queues_each_message_and_answers_each_in_order(api, server):
    good = {"from": "app@example.com", "to": ["a@example.org"], "text": "hello"}
    raw = "From: app@example.com\r\nTo: b@example.org\r\nSubject: raw\r\n\r\nhi\r\n"
    response = post_batch(
        api,
        [
            good,
            {"from": "app@example.com", "to": ["not an address"], "text": "x"},
            {"raw": raw},
            {**good, "attachments": [{"filename": "a", "content_base64": "%%%"}]},
        ],
    )
    assert response.status_code == 200, response.content
    data = response.json()
    assert (data["queued"], data["refused"]) == (2, 2)
    first, bad_to, from_raw, bad_attachment = data["results"]
    assert first["status"] == 201 and from_raw["status"] == 201
    assert bad_to["status"] == 422 and bad_to["id"] is None
    assert set(bad_to["errors"]) == {"messages[1].to[0]"}
    assert bad_to["detail"].startswith("messages[1].to[0]: ")
    assert bad_attachment["errors"] == {
        "messages[3].attachments[0].content_base64": "is not valid base64"
    }
    queued = {m.pk: m for m in OutgoingMessage.objects.all()}
    assert set(queued) == {first["id"], from_raw["id"]}
    assert queued[first["id"]].message_id == first["message_id"]
    assert queued[from_raw["id"]].to == ["b@example.org"]
    assert {m.source for m in queued.values()} == {"api"}


@pytest.mark.parametrize(
    "body",
    [
        {"from": "app@example.com", "to": ["not an address"], "text": "x"},
        {"from": "app@example.com", "text": "no recipient"},
        {"to": ["a@example.org"], "text": "no sender"},
        {"from": "app@example.com", "to": ["a@example.org"], "headers": {"Subject": "x"}},
        {
            "from": "app@example.com",
            "to": ["a@example.org"],
            "attachments": [{"filename": "a", "content_base64": "%%%"}],
        },
        {"from": "app@example.com", "to": ["a@example.org"], "server": "no such server"},
    ],
)
def test_a_batch_refuses_a_message_as_the_single_post_does(api, server, body):
    """The same field error: the same status (422) and the same errors, under messages[i]."""
    single = post(api, body)
    assert single.status_code == 422, single.content
    item = post_batch(api, [body])
    assert item.status_code == 200
    (result,) = item.json()["results"]
    assert result["status"] == single.status_code
    assert result["errors"] == {
        f"messages[0].{name}": text for name, text in single.json()["errors"].items()
    }
    assert result["detail"] == "; ".join(f"{k}: {v}" for k, v in result["errors"].items())
    assert result["id"] is None and result["message_id"] is None
    assert OutgoingMessage.objects.count() == 0


def test_batch_idempotency_keys_work_per_message_within_and_across_batches(api, server):
    body = {"from": "app@example.com", "to": ["a@example.org"], "text": "once"}
    first = post_batch(
        api,
        [
            {**body, "idempotency_key": "k-1"},
            {**body, "idempotency_key": "k-1"},  # the same request twice in one batch
            {**body, "text": "other", "idempotency_key": "k-1"},
            {**body, "idempotency_key": " "},
        ],
    ).json()
    statuses = [r["status"] for r in first["results"]]
    assert statuses == [201, 200, 422, 400]
    assert first["results"][1]["id"] == first["results"][0]["id"]
    assert "messages[2].idempotency_key" in first["results"][2]["errors"]
    assert first["results"][3]["errors"] == {
        "messages[3].idempotency_key": "must be 1 to 255 printable characters"
    }
    # A retried batch queues nothing new; the header's keys and the batch's share one namespace.
    again = post_batch(api, [{**body, "idempotency_key": "k-1"}]).json()
    assert again["results"][0] == {**first["results"][0], "status": 200}
    single = post(api, body, HTTP_IDEMPOTENCY_KEY="k-1")
    assert single.status_code == 200 and single.json()["id"] == first["results"][0]["id"]
    assert OutgoingMessage.objects.count() == 1


def test_a_batch_holds_1_to_500_messages(api, server):
    body = {"from": "app@example.com", "to": ["a@example.org"], "text": "x"}
    for messages in ([], [body] * 501):
        response = post_batch(api, messages)
        assert response.status_code == 400
        assert "must hold 1 to 500 messages" in response.json()["errors"]["messages"]
    response = post_batch(api, [body] * 500)
    assert response.status_code == 200 and response.json()["queued"] == 500
    assert OutgoingMessage.objects.count() == 500


REFUSE_THIRD_INSERT = {
    "sqlite": [
        "CREATE TRIGGER refuse_third BEFORE INSERT ON outbox_outgoingmessage "
        "WHEN (SELECT COUNT(*) FROM outbox_outgoingmessage) >= 2 "
        "BEGIN SELECT RAISE(ABORT, 'no room for a third message'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_third() RETURNS trigger AS $$ BEGIN "
        "IF (SELECT COUNT(*) FROM outbox_outgoingmessage) >= 2 THEN "
        "RAISE EXCEPTION 'no room for a third message'; END IF; RETURN NEW; END $$ "
        "LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_third BEFORE INSERT ON outbox_outgoingmessage "
        "FOR EACH ROW EXECUTE FUNCTION refuse_third()",
    ],
}
DROP_REFUSE_THIRD = {
    "sqlite": ["DROP TRIGGER refuse_third"],
    "postgresql": [
        "DROP TRIGGER refuse_third ON outbox_outgoingmessage",
        "DROP FUNCTION refuse_third()",
    ],
}


@pytest.mark.django_db(transaction=True)
def test_a_batch_is_committed_together(api, server):
    """A failure the API does not answer per message (here the database refusing the third
    insert, through a trigger) leaves none of the batch queued."""
    from django.db import connection

    with connection.cursor() as cursor:
        for sql in REFUSE_THIRD_INSERT[connection.vendor]:
            cursor.execute(sql)
    try:
        body = {"from": "app@example.com", "to": ["a@example.org"], "text": "x"}
        api.raise_request_exception = False
        response = post_batch(api, [body] * 4)
        assert response.status_code == 500
        assert OutgoingMessage.objects.count() == 0
        assert post_batch(api, [body] * 2).json()["queued"] == 2  # the trigger allows two
    finally:
        with connection.cursor() as cursor:
            for sql in DROP_REFUSE_THIRD[connection.vendor]:
                cursor.execute(sql)
