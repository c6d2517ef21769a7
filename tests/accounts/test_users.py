"""People: the Users page (administrators), Change password (everyone), one-time reset links, and
`mailgate users list|add|deactivate|activate|set-password`."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from tests.conftest import PASSWORD


def test_an_administrator_adds_a_viewer_whose_generated_password_is_shown_once(
    admin_client: Client,
) -> None:
    page = admin_client.post(
        "/settings/users/", {"email": "Vera@Example.com", "role": "viewer", "password": ""}
    )
    body = page.content.decode()
    assert page["Cache-Control"] == "no-store"
    shown = re.search(r'<p class="secret-once">([^<]+)</p>', body)
    assert shown is not None
    vera = User.objects.get(username="vera@example.com")
    assert not vera.is_staff and vera.check_password(shown[1])
    assert "vera@example.com" in admin_client.get("/settings/users/").content.decode()
    assert shown[1] not in admin_client.get("/settings/users/").content.decode()


def test_adding_an_existing_address_is_refused_naming_the_field(admin_client: Client) -> None:
    page = admin_client.post(
        "/settings/users/", {"email": "alice@example.com", "role": "viewer", "password": ""}
    )
    assert "alice@example.com exists already" in page.content.decode()


def test_a_viewer_may_not_open_the_users_page(viewer_client: Client) -> None:
    assert viewer_client.get("/settings/users/").status_code == 403
    assert "Users</a>" not in viewer_client.get("/settings/").content.decode()


def test_deactivating_refuses_the_last_administrator(admin_client: Client, admin: User) -> None:
    page = admin_client.post(f"/settings/users/{admin.pk}/", {"action": "deactivate"}, follow=True)
    assert "the last active administrator" in page.content.decode()
    admin.refresh_from_db()
    assert admin.is_active


def test_a_deactivated_user_cannot_sign_in(admin_client: Client, viewer: User) -> None:
    admin_client.post(f"/settings/users/{viewer.pk}/", {"action": "deactivate"})
    viewer.refresh_from_db()
    assert not viewer.is_active
    assert not Client().login(username=viewer.username, password=PASSWORD)


def test_a_one_time_link_sets_a_password_once(admin_client: Client, viewer: User) -> None:
    page = admin_client.post(f"/settings/users/{viewer.pk}/", {"action": "reset-link"})
    link = re.search(r'<p class="secret-once">http://testserver([^<]+)</p>', page.content.decode())
    assert link is not None
    stranger = Client()
    form_page = stranger.get(link[1], follow=True)
    assert "Choose a password" in form_page.content.decode()
    new = "A-new-password-42"
    done = stranger.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": new, "new_password2": new},
        follow=True,
    )
    assert "Password set: sign in with it." in done.content.decode()
    viewer.refresh_from_db()
    assert viewer.check_password(new)
    assert "used already or has expired" in Client().get(link[1], follow=True).content.decode()


def test_everyone_changes_their_own_password(viewer_client: Client, viewer: User) -> None:
    page = viewer_client.get("/accounts/password_change/")
    assert page.status_code == 200 and "Change password" in page.content.decode()
    new = "Another-password-77"
    done = viewer_client.post(
        "/accounts/password_change/",
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
        follow=True,
    )
    assert "Your password was changed." in done.content.decode()
    viewer.refresh_from_db()
    assert viewer.check_password(new)


def _users(*args: str, stdin: str = "") -> str:
    out = io.StringIO()
    import sys

    previous = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        call_command("users", *args, stdout=out)
    finally:
        sys.stdin = previous
    return out.getvalue()


def test_the_users_command_adds_lists_deactivates_and_sets_passwords(db: None) -> None:
    added = _users("add", "ops@example.com", "--administrator")
    assert "Added administrator ops@example.com." in added
    generated = added.split("Change password): ")[1].strip()
    assert User.objects.get(username="ops@example.com").check_password(generated)
    _users("add", "read@example.com", "--password-stdin", stdin="Typed-password-9\n")
    listed = json.loads(_users("list", "--json"))
    assert [(u["email"], u["role"], u["active"]) for u in listed] == [
        ("ops@example.com", "administrator", True),
        ("read@example.com", "viewer", True),
    ]
    assert "read@example.com deactivated." in _users("deactivate", "read@example.com")
    assert "deactivated" in _users("list")
    _users("set-password", "read@example.com", "--password-stdin", stdin="Other-password-8\n")
    assert User.objects.get(username="read@example.com").check_password("Other-password-8")
    with pytest.raises(
        CommandError, match=re.escape("ops@example.com is the last active administrator")
    ):
        _users("deactivate", "ops@example.com")
    with pytest.raises(CommandError, match=re.escape("EMAIL: no user 'nobody@example.com'")):
        _users("set-password", "nobody@example.com")
