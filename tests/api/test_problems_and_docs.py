"""The API's one error shape (RFC 9457 problem details naming the failing field's path), unknown
fields refused with 422, and an OpenAPI document that describes every field with an example."""

from __future__ import annotations

import base64

import pytest
from django.test import Client

from mailgate.api.models import APIKey
from mailgate.api.problems import field_path
from mailgate.outbox.models import OutgoingMessage
from mailgate.servers.models import MailServer

PROBLEM_KEYS = {"type", "title", "status", "detail", "errors"}


@pytest.fixture
def make_server(db: None):
    def make() -> MailServer:
        return MailServer.objects.create(
            name="main", smtp_host="127.0.0.1", smtp_port=2525, smtp_security="none"
        )

    return make


@pytest.fixture
def api(db: None) -> Client:
    _, secret = APIKey.issue("tests")
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


def _post(client: Client, body: object) -> object:
    return client.post("/api/v1/messages", body, content_type="application/json")


def _problem(response: object, status: int) -> dict[str, object]:
    assert response.status_code == status, response.content  # type: ignore[attr-defined]
    assert response["Content-Type"] == "application/problem+json"  # type: ignore[index]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) >= PROBLEM_KEYS and body["status"] == status
    return body


def test_an_unknown_field_is_refused_with_422_naming_it(api: Client, make_server) -> None:
    make_server()
    body = {
        "from": "app@example.com",
        "to": ["a@example.org"],
        "text": "hi",
        "attachments": [{"filename": "a.txt", "content": base64.b64encode(b"x").decode()}],
    }
    problem = _problem(_post(api, body), 422)
    errors = problem["errors"]
    assert isinstance(errors, dict)
    assert errors["attachments[0].content"] == (
        "unknown field 'content': not part of this request (did you mean 'content_base64'?)"
    )
    assert errors["attachments[0].content_base64"] == "Field required"
    assert "attachments[0].content" in str(problem["detail"])
    assert OutgoingMessage.objects.count() == 0


def test_an_unknown_top_level_field_is_refused_too(api: Client, make_server) -> None:
    make_server()
    problem = _problem(
        _post(api, {"from": "app@example.com", "to": "a@example.org", "body": "hi"}), 422
    )
    assert set(problem["errors"]) == {"body"}  # type: ignore[arg-type]


def test_bad_input_401_404_and_422_share_one_shape(api: Client, make_server) -> None:
    make_server()
    bad = _problem(_post(api, {"from": "app@example.com", "to": ["alex@"], "text": "x"}), 422)
    assert bad["title"] == "Unprocessable Entity" and "to[0]" in bad["errors"]
    unauthorized = _problem(Client().get("/api/v1/messages"), 401)
    assert unauthorized["title"] == "Unauthorized" and unauthorized["code"] == "missing_api_key"
    missing = _problem(api.get("/api/v1/messages/99999"), 404)
    assert missing["detail"].startswith("no message with id 99999")
    typed = _problem(api.get("/api/v1/messages?limit=0"), 422)
    assert list(typed["errors"]) == ["limit"]  # type: ignore[arg-type]


def test_field_paths_are_written_as_a_client_would() -> None:
    assert (
        field_path(("body", "payload", "attachments", 0, "filename")) == "attachments[0].filename"
    )
    assert field_path(("query", "limit")) == "limit"
    assert field_path(("body", "payload")) == "body"


def test_the_openapi_document_describes_every_field_with_an_example(db: None) -> None:
    doc = Client().get("/api/v1/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name in ("MessageIn", "AttachmentIn", "MessageOut", "AttemptOut", "ErrorOut"):
        for field, spec in schemas[name]["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"
            # Times are self-explanatory (date-time); a list of objects shows its items' examples.
            if "date-time" in str(spec) or "$ref" in str(spec):
                continue
            assert "examples" in spec, f"{name}.{field} has no example"
    post = doc["paths"]["/api/v1/messages"]["post"]
    headers = [p for p in post["parameters"] if p["in"] == "header"]
    assert [h["name"] for h in headers] == ["Idempotency-Key"]
    assert doc["components"]["securitySchemes"]["BearerKey"]["scheme"] == "bearer"
    assert "Idempotency-Key" in doc["info"]["description"]


def test_the_docs_page_and_its_files_are_served_by_mailgate(db: None) -> None:
    page = Client().get("/api/v1/docs")
    assert page.status_code == 200
    html = page.content.decode()
    assert "cdn" not in html.lower()
    for asset in ("/static/ninja/swagger-ui-bundle.js", "/static/ninja/swagger-ui.css"):
        assert asset in html
        served = Client().get(asset)
        assert served.status_code == 200
    assert Client().get("/static/../settings.py").status_code == 404
