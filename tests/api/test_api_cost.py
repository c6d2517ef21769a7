"""What one API call costs the web process: its queries and its middleware (issue 12).

CPU per call is measured by the benchmark (`tests/bench/api_cpu.py`), never in a timed test; these
tests pin what makes it: the number of queries per POST and per batch, and that an API call skips
the console's session, CSRF, sign-in and message middleware while keeping the security headers,
the Host check and the per-key rate.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

import pytest
from django.contrib.auth.middleware import AuthenticationMiddleware, LoginRequiredMiddleware
from django.contrib.auth.models import User
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.db import connection
from django.middleware.csrf import CsrfViewMiddleware
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from mailgate.accounts import throttle
from mailgate.accounts.models import Counter
from mailgate.api.models import APIKey
from mailgate.outbox.models import OutgoingMessage
from mailgate.servers.models import MailServer

BODY = {"from": "app@example.com", "to": ["a@example.org"], "subject": "hi", "text": "hello"}
CONSOLE_MIDDLEWARE = (
    SessionMiddleware,
    CsrfViewMiddleware,
    AuthenticationMiddleware,
    MessageMiddleware,
    LoginRequiredMiddleware,
)


@pytest.fixture
def secret(db: None) -> str:
    return APIKey.issue("erp", scope="send")[1]


@pytest.fixture
def api(secret: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


@pytest.fixture
def server(db: None) -> MailServer:
    return MailServer.objects.create(
        name="main", auth_method="password", smtp_host="127.0.0.1", smtp_security="none"
    )


def tables(queries: list[dict[str, Any]]) -> list[str]:
    """Each query as its verb and table, e.g. 'INSERT outbox_outgoingmessage'."""
    named = []
    for query in queries:
        sql = query["sql"]
        found = re.search(r'\b(?:FROM|INTO|UPDATE)\s+"?(\w+)"?', sql)
        named.append(f"{sql.split(None, 1)[0].upper()} {found.group(1) if found else ''}".strip())
    return named


def test_a_post_costs_three_queries_and_reads_back_nothing(api: Client, server: MailServer) -> None:
    """The key (one indexed lookup), its rate (one upsert that returns the count), the insert.
    The answer is built from the row just written; the server list is cached between calls."""
    assert api.post("/api/v1/messages", BODY, content_type="application/json").status_code == 201
    with CaptureQueriesContext(connection) as captured:
        response = api.post("/api/v1/messages", BODY, content_type="application/json")
    assert response.status_code == 201
    assert tables(captured.captured_queries) == [
        "SELECT api_apikey",
        "INSERT accounts_counter",
        "INSERT outbox_outgoingmessage",
    ], [q["sql"] for q in captured.captured_queries]
    message = OutgoingMessage.objects.get(pk=response.json()["id"])
    assert response.json()["message_id"] == message.message_id
    assert response.json()["created_at"].startswith(f"{message.created_at:%Y-%m-%dT%H:%M:%S}")


def test_a_batch_costs_the_same_queries_whatever_its_size_but_its_bulk_inserts(
    api: Client, server: MailServer
) -> None:
    def batch(count: int) -> list[str]:
        messages = [{**BODY, "to": [f"a{i}@example.org"]} for i in range(count)]
        with CaptureQueriesContext(connection) as captured:
            response = api.post(
                "/api/v1/messages/batch", {"messages": messages}, content_type="application/json"
            )
        assert response.status_code == 200 and response.json()["queued"] == count
        return tables(captured.captured_queries)

    batch(1)  # the server list is read once
    small, large = batch(2), batch(200)
    insert = "INSERT outbox_outgoingmessage"
    assert [q for q in small if q != insert] == [q for q in large if q != insert]
    assert small.count(insert) == 1
    # One INSERT for many rows; SQLite takes at most 999 parameters in a statement.
    fields = [f for f in OutgoingMessage._meta.concrete_fields if not f.primary_key]
    rows_per_insert = connection.ops.bulk_batch_size(fields, [None] * 200)
    assert large.count(insert) == math.ceil(200 / rows_per_insert) <= 200 / 25
    ids = [m.pk for m in OutgoingMessage.objects.order_by("pk")]
    assert len(ids) == 203 and ids == sorted(set(ids))


def test_a_batch_answers_ids_in_order_with_keys_between_unkeyed_messages(
    api: Client, server: MailServer
) -> None:
    messages = [
        {**BODY, "to": ["a0@example.org"]},
        {**BODY, "to": ["a1@example.org"], "idempotency_key": "k1"},
        {**BODY, "to": ["a2@example.org"]},
        {**BODY, "to": ["a1@example.org"], "idempotency_key": "k1"},
    ]
    response = api.post(
        "/api/v1/messages/batch", {"messages": messages}, content_type="application/json"
    )
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 201, 201, 200]
    assert results[0]["id"] < results[1]["id"] < results[2]["id"] == results[1]["id"] + 1
    assert results[3]["id"] == results[1]["id"]
    stored = {m.pk: m for m in OutgoingMessage.objects.all()}
    assert [stored[r["id"]].to for r in results] == [[m["to"][0]] for m in messages]
    assert all(stored[r["id"]].message_id == r["message_id"] for r in results)


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the console middleware classes that handled a request."""
    seen: list[str] = []
    for cls in CONSOLE_MIDDLEWARE:
        original = cls.__call__

        def spy(self: Any, request: Any, original: Any = original, name: str = cls.__name__) -> Any:
            seen.append(name)
            return original(self, request)

        monkeypatch.setattr(cls, "__call__", spy)
    return seen


def test_an_api_call_skips_session_csrf_sign_in_and_messages(
    api: Client, server: MailServer, ran: list[str]
) -> None:
    response = api.post("/api/v1/messages", BODY, content_type="application/json")
    assert response.status_code == 201
    assert ran == []
    assert not response.cookies  # no session, no CSRF cookie
    assert "Cookie" not in response.get("Vary", "")


def test_the_console_keeps_all_of_them(admin_client: Client, admin: User, ran: list[str]) -> None:
    assert admin_client.get("/").status_code == 200
    assert ran == [cls.__name__ for cls in CONSOLE_MIDDLEWARE]
    # CSRF still binds the console: a form posted without its token is refused,
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin)
    assert strict.post("/settings/api-keys/", {"name": "x"}).status_code == 403
    # and a page still needs a sign-in.
    assert Client().get("/").status_code == 302


def test_an_api_answer_keeps_the_security_headers_and_the_host_check(
    api: Client, server: MailServer
) -> None:
    response = api.post("/api/v1/messages", BODY, content_type="application/json")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
    stranger = api.post(
        "/api/v1/messages", BODY, content_type="application/json", HTTP_HOST="evil.example"
    )
    assert stranger.status_code == 400
    assert OutgoingMessage.objects.count() == 1


def test_the_docs_page_is_served_as_a_page(db: None) -> None:
    response = Client().get("/api/v1/docs")
    assert response.status_code == 200
    assert response["X-Frame-Options"] == "DENY"


def test_a_key_revoked_elsewhere_stops_working_with_the_next_call(
    api: Client, server: MailServer
) -> None:
    """No key is cached: a revocation written by another process (here a plain UPDATE, as the
    console or the CLI in another process would) refuses the very next call."""
    assert api.post("/api/v1/messages", BODY, content_type="application/json").status_code == 201
    APIKey.objects.filter(name="erp").update(revoked_at=timezone.now())
    response = api.post("/api/v1/messages", BODY, content_type="application/json")
    assert response.status_code == 401
    assert response.json()["code"] == "revoked_api_key"
    # and a scope narrowed elsewhere binds at once too.
    APIKey.objects.filter(name="erp").update(revoked_at=None, scope="read")
    assert api.post("/api/v1/messages", BODY, content_type="application/json").status_code == 403
    assert OutgoingMessage.objects.count() == 1


def test_the_key_row_is_read_as_the_orm_reads_it(api: Client, secret: str) -> None:
    """The hand-written lookup gives the same values as the ORM (aware datetimes included)."""
    from mailgate.keys.check import find_key

    row = APIKey.objects.get(name="erp")
    APIKey.objects.filter(pk=row.pk).update(last_used_at=timezone.now() - dt.timedelta(hours=1))
    found = find_key(secret)
    expected = APIKey.objects.get(pk=row.pk)
    for field in APIKey._meta.concrete_fields:
        assert getattr(found, field.attname) == getattr(expected, field.attname), field.name
    assert found.last_used_at is not None and timezone.is_aware(found.last_used_at)
    assert found.revoked_at is None


def test_the_rate_counter_counts_each_hit_and_restarts_with_a_new_window(db: None) -> None:
    counts = [throttle.hit("apikey:test", 60)[0] for _ in range(3)]
    assert counts == [1, 2, 3]
    row = Counter.objects.get(name="apikey:test")
    assert row.count == 3 and row.window_start.second == 0
    # The window moved on (as a minute later): the count starts again at 1.
    Counter.objects.filter(pk=row.pk).update(
        window_start=row.window_start - dt.timedelta(minutes=1)
    )
    count, ends = throttle.hit("apikey:test", 60)
    assert count == 1
    assert ends == Counter.objects.get(pk=row.pk).window_start + dt.timedelta(seconds=60)
    assert Counter.objects.filter(name="apikey:test").count() == 1


def test_the_deploy_checks_still_see_the_consoles_csrf_and_session_middleware(
    settings: Any,
) -> None:
    """Django looks for them in MIDDLEWARE only; mailgate's check runs Django's against the chain a
    console request goes through, so an insecure cookie is still reported."""
    from mailgate.console.checks import console_middleware

    settings.CSRF_COOKIE_SECURE = True
    settings.SESSION_COOKIE_SECURE = True
    assert console_middleware(None) == []
    settings.CSRF_COOKIE_SECURE = False
    settings.SESSION_COOKIE_SECURE = False
    assert {m.id for m in console_middleware(None)} == {"security.W016", "security.W012"}
    settings.MAILGATE_CONSOLE_MIDDLEWARE = [
        m for m in settings.MAILGATE_CONSOLE_MIDDLEWARE if not m.endswith("CsrfViewMiddleware")
    ]
    settings.CSRF_COOKIE_SECURE = True
    settings.SESSION_COOKIE_SECURE = True
    assert [m.id for m in console_middleware(None)] == ["mailgate.W001"]
