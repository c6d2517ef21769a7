"""Attack 13: whatever a client sends. schemathesis generates requests from the OpenAPI document
(a bounded number per operation): no 5xx, and every 4xx names the field. The OAuth callback gets
hostile state/code/error values: 4xx pages, nothing stored, nothing reflected unescaped."""

from __future__ import annotations

import html
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from mailgate.api.models import APIKey
from mailgate.oauth.models import Grant, OAuthState
from mailgate.servers.models import MailServer
from tests.oauth.conftest import start_connect

EXAMPLES = 25  # per operation and mode (valid, invalid): five operations, seconds in all


@pytest.fixture
def keep_test_connection() -> Iterator[None]:
    """As Django's test client does: the request cycle must not close the test's connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def api_key(db: None, settings: Any, keep_test_connection: None) -> str:
    settings.MAILGATE_API_RATE_LIMIT = 0
    settings.ALLOWED_HOSTS = ["*"]
    MailServer.objects.create(name="catch-all", smtp_host="127.0.0.1", smtp_port=2525)
    return APIKey.issue("fuzz", scope="admin")[1]


def names_the_field(body: Any) -> bool:
    """`errors` maps fields to problems, or a validation `detail` lists each field's `loc`."""
    if not isinstance(body, dict):
        return False
    errors = body.get("errors")
    if isinstance(errors, dict) and errors:
        return True
    detail = body.get("detail")
    return (
        isinstance(detail, list)
        and bool(detail)
        and all(isinstance(d, dict) and d.get("loc") for d in detail)
    )


def test_the_api_answers_any_request_without_5xx_and_names_the_field(api_key: str) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())
    headers = {"Authorization": f"Bearer {api_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5

    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    for operation, mode in itertools.product(operations, modes):

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def answers(case: Any) -> None:
            response = case.call(headers=headers)
            case.validate_response(response, checks=[not_a_server_error])
            if 400 <= response.status_code < 500:
                body = response.json()
                assert names_the_field(body), (case.path, response.status_code, body)

        answers()


HOSTILE = st.one_of(
    st.sampled_from(
        [
            "<script>alert(1)</script>",
            '"><img src=x onerror=alert(1)>',
            "javascript:alert(1)",
            "\r\nSet-Cookie: sessionid=stolen",
            "%0d%0aLocation:%20https://evil.example",
            "' OR 1=1 --",
            "A" * 5000,
            "\x00\x0b\u2028",
        ]
    ),
    st.text(max_size=200),
)
PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "state": HOSTILE,
        "code": HOSTILE,
        "error": HOSTILE,
        "error_description": HOSTILE,
    },
)


def _assert_safe(response: Any, params: dict[str, str]) -> None:
    assert response.status_code < 500
    page = response.content.decode("utf-8", "replace")
    for value in params.values():
        if any(c in value for c in "<>\"'") and len(value) > 3:
            assert value not in page, value
    assert "Set-Cookie" not in "".join(
        f"{k}:{v}" for k, v in response.headers.items() if k != "Set-Cookie"
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(params=PARAMS)
def test_a_hostile_callback_without_a_sign_in_gets_a_4xx_and_changes_nothing(
    admin_client: Client, params: dict[str, str]
) -> None:
    servers = list(MailServer.objects.values_list("pk", "status"))
    response = admin_client.get("/oauth/microsoft/callback", params)
    assert 400 <= response.status_code < 500
    _assert_safe(response, params)
    assert not Grant.objects.exists()
    assert list(MailServer.objects.values_list("pk", "status")) == servers


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(error=HOSTILE.filter(bool), description=HOSTILE)
def test_a_hostile_provider_error_on_a_real_sign_in_is_shown_escaped_and_stores_nothing(
    admin_client: Client, outlook_server: MailServer, error: str, description: str
) -> None:
    location = start_connect(admin_client, outlook_server)
    state = location.split("state=", 1)[1].split("&", 1)[0]
    from urllib.parse import unquote

    params = {"state": unquote(state), "error": error, "error_description": description}
    response = admin_client.get("/oauth/microsoft/callback", params)
    _assert_safe(response, params)
    page = response.content.decode()
    if "<" in error and error.strip():
        assert html.escape(error, quote=False) in page or error not in page
    assert not Grant.objects.exists()
    assert not OAuthState.objects.filter(server=outlook_server).exists()
