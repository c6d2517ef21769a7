"""Sign-in, sign-out, login throttling, roles and createadmin."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from tests.conftest import PASSWORD

CONSOLE_PAGES = ["/", "/settings/", "/settings/technical/", "/settings/technical/mail-servers/"]


def _sign_in(client: Client, username: str, password: str, address: str = "10.0.0.1") -> object:
    return client.post(
        reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=address
    )


@pytest.mark.parametrize("path", CONSOLE_PAGES)
def test_every_console_page_sends_a_stranger_to_sign_in(stranger_client: Client, path: str) -> None:
    response = stranger_client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


@pytest.mark.parametrize(
    "path", ["/oauth/microsoft/callback?code=c&state=s", "/oauth/google/callback?code=c&state=s"]
)
def test_an_oauth_callback_needs_the_signed_in_administrator(
    stranger_client: Client, path: str
) -> None:
    response = stranger_client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


@pytest.mark.parametrize(
    ("path", "status", "content_type"),
    [
        ("/healthz", 200, "application/json"),
        ("/metrics", 200, "text/plain"),
        ("/api/v1/openapi.json", 200, "application/json"),
        (
            "/api/v1/messages",
            401,
            "application/problem+json",
        ),  # the API asks for its key, not a sign-in
    ],
)
def test_health_metrics_and_the_api_answer_a_stranger_without_sign_in(
    stranger_client: Client, path: str, status: int, content_type: str
) -> None:
    response = stranger_client.get(path)
    assert response.status_code == status
    assert response["Content-Type"].startswith(content_type)


def test_the_sign_in_page_is_open_and_labels_its_fields(stranger_client: Client) -> None:
    response = stranger_client.get(reverse("login"))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<label for="id_username">Email</label>' in html
    assert '<label for="id_password">Password</label>' in html
    assert "csrfmiddlewaretoken" in html


def test_an_administrator_signs_in_with_the_email_address(admin: User) -> None:
    client = Client()
    response = _sign_in(client, "Alice@Example.com".lower(), PASSWORD)
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_sign_in_accepts_the_address_in_another_case(admin: User) -> None:
    client = Client()
    response = _sign_in(client, "ALICE@example.com", PASSWORD)
    assert response.status_code == 302, "sign-in must not depend on the address's case"


def test_a_wrong_password_is_refused_with_a_message(admin: User) -> None:
    response = _sign_in(Client(), "alice@example.com", "wrong password")
    assert response.status_code == 200
    assert "Please enter a correct" in response.content.decode()


def test_sign_out_needs_a_post_and_ends_the_session(admin_client: Client) -> None:
    assert admin_client.get("/").status_code == 200
    assert admin_client.get(reverse("logout")).status_code == 405
    response = admin_client.post(reverse("logout"))
    assert response.status_code == 302
    assert admin_client.get("/").status_code == 302


def test_sign_in_is_refused_after_repeated_failures_even_with_the_right_password(
    admin: User, settings: object
) -> None:
    client = Client()
    for _ in range(5):
        _sign_in(client, "alice@example.com", "wrong password")
    response = _sign_in(client, "alice@example.com", PASSWORD)
    assert response.status_code == 200
    assert "Too many failed sign-ins" in response.content.decode()
    assert client.get("/").status_code == 302


def test_throttling_counts_per_account_and_client_address(admin: User) -> None:
    client = Client()
    for i in range(5):
        _sign_in(client, f"nobody{i}@example.com", "wrong password", address="10.9.9.9")
    # Failures on other accounts from the same address (one proxy, many users) lock nobody out.
    assert _sign_in(client, "alice@example.com", PASSWORD, address="10.9.9.9").status_code == 302
    for _ in range(5):
        _sign_in(Client(), "alice@example.com", "wrong password", address="10.9.9.9")
    locked = _sign_in(Client(), "alice@example.com", PASSWORD, address="10.9.9.9")
    assert "Too many failed sign-ins" in locked.content.decode()
    other = _sign_in(Client(), "alice@example.com", PASSWORD, address="10.9.9.10")
    assert other.status_code == 302


def test_the_lock_expires_after_the_window(admin: User, time_machine: object) -> None:
    import datetime as dt

    time_machine.move_to(dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC))  # type: ignore[attr-defined]
    client = Client()
    for _ in range(5):
        _sign_in(client, "alice@example.com", "wrong password")
    assert "Too many" in _sign_in(client, "alice@example.com", PASSWORD).content.decode()
    time_machine.move_to(dt.datetime(2030, 1, 1, 12, 16, tzinfo=dt.UTC))  # type: ignore[attr-defined]
    assert _sign_in(client, "alice@example.com", PASSWORD).status_code == 302


def test_a_success_resets_the_failure_count(admin: User) -> None:
    client = Client()
    for _ in range(4):
        _sign_in(client, "alice@example.com", "wrong password")
    assert _sign_in(client, "alice@example.com", PASSWORD).status_code == 302
    client.post(reverse("logout"))
    for _ in range(4):
        _sign_in(client, "alice@example.com", "wrong password")
    assert _sign_in(client, "alice@example.com", PASSWORD).status_code == 302


def test_the_sign_in_form_enforces_csrf(admin: User) -> None:
    client = Client(enforce_csrf_checks=True)
    response = _sign_in(client, "alice@example.com", PASSWORD)
    assert response.status_code == 403


def test_createadmin_reads_the_password_from_stdin(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough passphrase 42\n"))
    out = io.StringIO()
    call_command("createadmin", "--email", "Boss@Example.com", "--password-stdin", stdout=out)
    user = User.objects.get(username="boss@example.com")
    assert user.is_staff and user.check_password("a long enough passphrase 42")
    assert "passphrase" not in out.getvalue()
    client = Client()
    assert _sign_in(client, "boss@example.com", "a long enough passphrase 42").status_code == 302


def test_createadmin_generates_a_password_shown_once(db: None) -> None:
    out = io.StringIO()
    call_command("createadmin", "--email", "ops@example.com", stdout=out)
    password = out.getvalue().rsplit(": ", 1)[1].strip()
    assert User.objects.get(username="ops@example.com").check_password(password)


def test_createadmin_rejects_a_bad_address_naming_the_flag(db: None) -> None:
    with pytest.raises(CommandError, match="--email"):
        call_command("createadmin", "--email", "not-an-address")


def test_createadmin_viewer_creates_a_read_only_user(db: None) -> None:
    call_command("createadmin", "--email", "v@example.com", "--viewer", stdout=io.StringIO())
    assert not User.objects.get(username="v@example.com").is_staff
