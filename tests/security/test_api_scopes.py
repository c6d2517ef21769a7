"""Attack 9: one application's key reads another's mail, a read key queues mail, /metrics is open.
Attack 8 (rate): one key floods the API."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from mailgate.api.models import APIKey


def client_for(name: str, scope: str) -> Client:
    _, secret = APIKey.issue(name, scope=scope)
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


BODY = {"from": "app@example.com", "to": ["a@example.org"], "text": "payroll"}


@pytest.fixture
def queued(make_server: Any) -> tuple[Client, int]:
    make_server(name="main")
    erp = client_for("erp", "send")
    response = erp.post("/api/v1/messages", BODY, content_type="application/json")
    assert response.status_code == 201
    return erp, response.json()["id"]


def test_a_send_key_cannot_read_another_keys_messages(queued: tuple[Client, int]) -> None:
    erp, message_id = queued
    helpdesk = client_for("helpdesk", "send")
    assert helpdesk.get(f"/api/v1/messages/{message_id}").status_code == 404
    assert helpdesk.get("/api/v1/messages").json() == []
    assert erp.get(f"/api/v1/messages/{message_id}").status_code == 200
    assert [m["id"] for m in erp.get("/api/v1/messages").json()] == [message_id]


def test_a_send_key_cannot_list_the_servers(queued: tuple[Client, int]) -> None:
    erp, _ = queued
    response = erp.get("/api/v1/servers")
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
    assert "Authorization" in response.json()["errors"]
    assert 'error="insufficient_scope"' in response["WWW-Authenticate"]


def test_a_read_key_reads_everything_but_queues_nothing(queued: tuple[Client, int]) -> None:
    _, message_id = queued
    auditor = client_for("auditor", "read")
    assert auditor.get(f"/api/v1/messages/{message_id}").status_code == 200
    assert auditor.get("/api/v1/servers").status_code == 200
    response = auditor.post("/api/v1/messages", BODY, content_type="application/json")
    assert response.status_code == 403
    assert "Authorization" in response.json()["errors"]


def test_an_admin_key_does_both(queued: tuple[Client, int]) -> None:
    _, message_id = queued
    ops = client_for("ops", "admin")
    assert ops.get(f"/api/v1/messages/{message_id}").status_code == 200
    assert ops.get("/api/v1/servers").status_code == 200
    assert ops.post("/api/v1/messages", BODY, content_type="application/json").status_code == 201


def test_the_cli_creates_a_send_key_unless_told_otherwise(db: None) -> None:
    call_command("apikeys", "create", "--name", "relay", stdout=io.StringIO(), stderr=io.StringIO())
    call_command(
        "apikeys",
        "create",
        "--name",
        "audit",
        "--scope",
        "read",
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    assert dict(APIKey.objects.values_list("name", "scope")) == {"relay": "send", "audit": "read"}
    with pytest.raises(CommandError, match="--scope"):
        call_command("apikeys", "create", "--name", "x", "--scope", "root", stderr=io.StringIO())


def test_a_flooding_key_gets_429_with_retry_after_and_others_do_not(
    queued: tuple[Client, int], settings: Any
) -> None:
    settings.MAILGATE_API_RATE_LIMIT = 3
    erp, _ = queued  # its first request counted already
    answers = [erp.get("/api/v1/messages").status_code for _ in range(4)]
    assert answers == [200, 200, 429, 429]
    limited = erp.get("/api/v1/messages")
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert "MAILGATE_API_RATE_LIMIT" in limited.json()["detail"]
    assert client_for("other", "send").get("/api/v1/messages").status_code == 200


def test_metrics_need_the_token_when_one_is_set(db: None, settings: Any) -> None:
    settings.MAILGATE_METRICS_TOKEN = "s3cret-metrics-token"
    assert Client().get("/metrics").status_code == 401
    wrong = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer guess")
    assert wrong.status_code == 401 and "s3cret" not in wrong.content.decode()
    right = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token")
    assert right.status_code == 200 and b"mailgate_" in right.content
