"""The newcomer's pages in Debian's chromium, for an administrator and a viewer: the server page
led by its connection panel (Send test message with the result inline), the dashboard's traffic
chart, Settings > Users and Change password. Screenshots: docs/screenshots with `make screenshots`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from playwright.sync_api import Page, expect

from mailgate.outbox.worker import Deliverer
from mailgate.servers.models import MailServer
from tests.conftest import PASSWORD
from tests.smtpsink import SMTPSink

pytestmark = pytest.mark.browser


@pytest.fixture
def people(transactional_db: None) -> tuple[User, User]:
    admin = User.objects.create_user(
        "alice@example.com", "alice@example.com", PASSWORD, is_staff=True
    )
    viewer = User.objects.create_user("victor@example.com", "victor@example.com", PASSWORD)
    return admin, viewer


@pytest.fixture
def relay(transactional_db: None) -> Iterator[MailServer]:
    """A server in front of a real SMTP server on loopback, and a worker thread as in `mailgate run`."""
    with SMTPSink() as sink:
        server = MailServer.objects.create(
            name="Contoso Relay",
            from_filter="billing@contoso.example",
            smtp_host="127.0.0.1",
            smtp_port=sink.port,
            smtp_security="none",
            status="ready",
        )
        stop = threading.Event()
        deliverer = Deliverer()

        def loop() -> None:
            while not stop.wait(0.05):
                deliverer.step(stop)
            deliverer.close_all()
            connection.close()  # this thread's own connection

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield server
        finally:
            stop.set()
            thread.join(timeout=10)


def test_an_administrator_sends_a_test_message_and_sees_it_in_the_chart(
    page: Page,
    people: tuple[User, User],
    relay: MailServer,
    sign_in: Callable[[Page, str, str], None],
    screenshots: Path,
) -> None:
    sign_in(page, "alice@example.com", PASSWORD)
    page.get_by_role("link", name="Mail Servers").click()
    row = page.get_by_role("row", name="Contoso Relay")
    expect(row).to_contain_text(f"127.0.0.1:{relay.smtp_port}")
    page.get_by_role("link", name="Contoso Relay").click()
    # The connection panel leads the page, beside the first fields; Delete waits at the end.
    test_button = page.get_by_role("button", name="Test Connection")
    username = page.get_by_label("Username")
    assert test_button.bounding_box()["y"] < page.get_by_label("SMTP Server").bounding_box()["y"]  # type: ignore[index]
    assert abs(test_button.bounding_box()["y"] - username.bounding_box()["y"]) < 400  # type: ignore[index]
    danger = page.locator("#danger-zone")
    assert danger.bounding_box()["y"] > page.get_by_role("button", name="Save").bounding_box()["y"]  # type: ignore[index]
    page.get_by_label("Send test message to").fill("me@example.org")
    page.get_by_role("button", name="Send test message").click()
    result = page.locator("#send-test-result")
    expect(result).to_contain_text("Test message sent")
    expect(result).to_contain_text("Sent from billing@contoso.example to me@example.org.")
    assert page.url.endswith("#connection")
    page.screenshot(path=str(screenshots / "server.png"), full_page=True)

    page.get_by_role("link", name="Dashboard").click()
    chart = page.get_by_role(
        "img", name="Contoso Relay, last 24 hours: 1 sent, 0 deferred, 0 failed"
    )
    expect(chart).to_be_visible()
    expect(
        page.get_by_role("img", name="Contoso Relay, last 7 days: 1 sent, 0 deferred, 0 failed")
    ).to_be_visible()
    page.screenshot(path=str(screenshots / "dashboard.png"), full_page=True)

    page.get_by_role("link", name="Outbox").click()
    page.get_by_label("Search").fill("me@example.org")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("cell", name="mailgate test message via Contoso Relay")).to_be_visible()


def test_an_administrator_adds_a_viewer_on_the_users_page(
    page: Page,
    people: tuple[User, User],
    sign_in: Callable[[Page, str, str], None],
    screenshots: Path,
) -> None:
    sign_in(page, "alice@example.com", PASSWORD)
    page.get_by_role("link", name="Settings").click()
    page.get_by_role("link", name="Users").click()
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    page.get_by_label("Email").fill("newbie@example.com")
    page.get_by_label("Role").select_option("viewer")
    page.get_by_role("button", name="Add user").click()
    once = page.locator("#once .secret-once")
    expect(once).to_be_visible()
    password = once.inner_text().strip()
    assert User.objects.get(username="newbie@example.com").check_password(password)
    expect(page.get_by_role("row", name="newbie@example.com")).to_contain_text("Viewer")
    page.get_by_role("button", name="Deactivate newbie@example.com").click()
    expect(page.get_by_role("row", name="newbie@example.com")).to_contain_text("Deactivated")
    page.screenshot(path=str(screenshots / "users.png"), full_page=True)


def test_a_viewer_changes_their_password_and_cannot_manage_users_or_send(
    page: Page,
    people: tuple[User, User],
    relay: MailServer,
    sign_in: Callable[[Page, str, str], None],
) -> None:
    sign_in(page, "victor@example.com", PASSWORD)
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("link", name="Users")).to_have_count(0)
    page.get_by_role("link", name="Mail Servers").click()
    page.get_by_role("link", name="Contoso Relay").click()
    expect(page.get_by_role("button", name="Send test message")).to_have_count(0)
    expect(page.locator("#danger-zone")).to_have_count(0)
    page.get_by_role("link", name="Change password").click()
    page.get_by_label("Old password").fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill("Victors-new-pass-9")
    page.get_by_label("New password confirmation").fill("Victors-new-pass-9")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_text("Your password was changed.")).to_be_visible()
    assert User.objects.get(username="victor@example.com").check_password("Victors-new-pass-9")
    response = page.goto("/settings/users/")
    assert response is not None and response.status == 403
