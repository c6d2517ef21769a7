"""The dashboard in Debian's chromium: a viewer sees the held queue and its fix, and the
navigation still finds exactly one Settings and one Mail Servers link."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from mailgate.outbox.hold import hold_server
from mailgate.outbox.models import OutgoingMessage
from mailgate.servers.models import MailServer, ServerStatus
from tests.conftest import PASSWORD
from tests.e2e.conftest import browser, context, page, playwright, sign_in  # noqa: F401

pytestmark = pytest.mark.browser


@pytest.fixture
def viewer_user(transactional_db: None) -> User:
    return User.objects.create_user(
        "victor@example.com", "victor@example.com", PASSWORD, is_staff=False
    )


def test_a_viewer_sees_a_held_queue_with_its_fix_and_follows_it_to_the_outbox(
    page: Page,  # noqa: F811
    sign_in: Callable[[Page, str, str], None],  # noqa: F811
    viewer_user: User,
    tmp_path: Path,
) -> None:
    server = MailServer.objects.create(
        name="Sales",
        username="sales@example.com",
        password="pw-plaintext-4711",
        smtp_host="127.0.0.1",
        status=ServerStatus.FAILING,
    )
    OutgoingMessage.objects.create(server=server, from_address="sales@example.com", raw=b"x")
    hold_server(server, "The server refused the credentials (535): replace the password.")

    sign_in(page, viewer_user.username, PASSWORD)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.locator("#health-summary")).to_contain_text("need action")
    findings = page.get_by_role("list", name="Findings for Sales")
    expect(findings).to_contain_text("Outgoing queue held (1 message)")
    expect(findings).to_contain_text("replace the password")
    expect(page.locator("#system")).to_contain_text("No worker has run in the last 5 minutes")
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

    page.get_by_role("link", name="1 held for Sales").click()
    expect(page.get_by_role("heading", name="Outbox")).to_be_visible()
    page.get_by_role("link", name="Dashboard").click()
    # Strict locators: exactly one link of each name on the dashboard.
    page.get_by_role("link", name="Settings").click()
    page.get_by_role("link", name="Technical").click()
    page.get_by_role("link", name="Mail Servers").click()
    expect(page.get_by_role("heading", name="Mail Servers")).to_be_visible()
