"""The dashboard: per-server health with queue counts and fixes, and the system section."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from html import unescape
from html.parser import HTMLParser
from typing import Any

import pytest
import time_machine
from django.test import Client

from mailgate.core.heartbeat import Heartbeat
from mailgate.oauth.models import Grant
from mailgate.outbox.hold import hold_server
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.servers.models import MailServer, ServerStatus

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
PASSWORD = "pw-plaintext-4711"
CLIENT_SECRET = "client-secret-value-0815"


class Links(HTMLParser):
    """Every <a>'s accessible name (aria-label, else its text) and href."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._open: list[Any] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            a = dict(attrs)
            self._open.append([a.get("aria-label"), a.get("href") or "", ""])

    def handle_data(self, data: str) -> None:
        for link in self._open:
            link[2] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open:
            label, href, text = self._open.pop()
            self.links.append(((label or text).strip(), href))


def links(html: str) -> list[tuple[str, str]]:
    parser = Links()
    parser.feed(html)
    return parser.links


@pytest.fixture
def frozen() -> Iterator[None]:
    with time_machine.travel(T0, tick=False):
        yield


@pytest.fixture
def servers(db: None, frozen: None) -> dict[str, MailServer]:
    sales = MailServer.objects.create(
        name="Sales",
        username="sales@example.com",
        password=PASSWORD,
        smtp_host="127.0.0.1",
        status=ServerStatus.READY,
        last_test_at=T0 - dt.timedelta(hours=2),
        last_test_ok=True,
    )
    outlook = MailServer.objects.create(
        name="Contoso",
        auth_method="outlook",
        username="info@contoso.example",
        client_id="app",
        client_secret=CLIENT_SECRET,
        client_secret_expires_on=dt.date(2026, 3, 20),
        status=ServerStatus.TOKEN_VALID,
        smtp_host="127.0.0.1",
    )
    Grant.objects.create(
        server=outlook,
        provider="microsoft",
        account=outlook.username,
        refresh_token="refresh-token-plaintext",
        access_token="access-token-plaintext",
        last_success_at=T0,
    )
    for status in (Status.QUEUED, Status.QUEUED, Status.DEFERRED):
        OutgoingMessage.objects.create(server=sales, status=status, from_address="a@b.c", raw=b"x")
    OutgoingMessage.objects.create(
        server=sales, status=Status.SENT, sent_at=T0, from_address="a@b.c", raw=b"x"
    )
    OutgoingMessage.objects.create(
        server=sales, status=Status.FAILED, last_reply="550 5.1.1 unknown", raw=b"x"
    )
    OutgoingMessage.objects.create(server=outlook, from_address="a@b.c", raw=b"x")
    hold_server(outlook, "The server refused the credentials (535): reconnect the account.")
    Heartbeat(holder="mx1:1").beat(now=T0)
    return {"sales": sales, "outlook": outlook}


def text(html: str) -> str:
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def test_each_server_shows_status_queue_counts_last_test_and_problems_with_their_fix(
    admin_client: Client, servers: dict[str, MailServer]
) -> None:
    response = admin_client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    sales, outlook = servers["sales"], servers["outlook"]
    row = text(html.split(f'id="server-{sales.pk}"')[1].split("</tr>")[0])
    assert "Sales sales@example.com Ready 2 1 0 1 1 Succeeded 2026-03-02 07:00" in row
    page = text(html)
    assert "Outgoing queue held (1 message)" in page
    assert "The server refused the credentials (535): reconnect the account." in page
    assert "Client secret expires in 18 days (2026-03-20)" in page
    assert (
        "Fix: Open Settings \u203a Technical \u203a Mail Server \u203a Mail Servers \u203a Contoso"
        in page
    )
    assert "1 message failed in the last 24 hours" in page
    # A problem count for the whole page (held queue, expiring secret, failed message).
    assert "3 problems need action." in page
    assert (f"1 held for {outlook.name}", f"/outbox/?server={outlook.pk}&status=held") in links(
        html
    )
    assert (f"2 queued for {sales.name}", f"/outbox/?server={sales.pk}&status=queued") in links(
        html
    )


def test_the_system_section_shows_the_worker_and_public_url(
    admin_client: Client, db: None, frozen: None, settings: Any
) -> None:
    settings.MAILGATE_PUBLIC_URL = "http://mail.example.com"
    page = text(admin_client.get("/").content.decode())
    assert "No worker has run in the last 5 minutes" in page
    assert "Fix: Start `mailgate worker` (or `mailgate run`, which runs one)." in page
    assert "MAILGATE_PUBLIC_URL is not https" in page
    Heartbeat(holder="mx1:1").beat(now=T0)
    settings.MAILGATE_PUBLIC_URL = "https://mail.example.com"
    page = text(admin_client.get("/").content.decode())
    assert "1 worker running" in page
    assert "Nothing needs action." in page
    assert "No mail server yet." in page


def test_viewers_see_the_same_health_without_any_action(
    viewer_client: Client, servers: dict[str, MailServer]
) -> None:
    html = viewer_client.get("/").content.decode()
    assert "Outgoing queue held (1 message)" in html
    # The only form is Sign out: nothing on the dashboard changes anything.
    assert html.count("<form") == 1 and "Sign out" in html


def test_strangers_are_sent_to_sign_in(stranger_client: Client, db: None) -> None:
    response = stranger_client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_no_secret_appears_on_the_dashboard(
    admin_client: Client, servers: dict[str, MailServer]
) -> None:
    html = admin_client.get("/").content.decode()
    for secret in (PASSWORD, CLIENT_SECRET, "refresh-token-plaintext", "access-token-plaintext"):
        assert secret not in html


def test_the_navigation_stays_unambiguous(
    admin_client: Client, servers: dict[str, MailServer]
) -> None:
    names = [name for name, _ in links(admin_client.get("/").content.decode())]
    # Playwright's get_by_role("link", name=...) matches substrings, case-insensitively.
    for nav in ("Dashboard", "Mail Servers", "Outbox", "Settings"):
        assert sum(nav.lower() in name.lower() for name in names) == 1, (nav, names)


def test_a_database_without_migrations_shows_only_the_system_problem(
    admin_client: Client, servers: dict[str, MailServer]
) -> None:
    from django.db import connection
    from django.db.migrations.recorder import MigrationRecorder

    MigrationRecorder(connection).migration_qs.filter(app="core").delete()
    page = text(admin_client.get("/").content.decode())
    assert "1 database migration not applied" in page
    assert "Run `mailgate migrate`" in page
    assert "Sales" not in page


def test_the_dashboard_reads_a_bounded_number_of_queries(
    admin_client: Client, servers: dict[str, MailServer], django_assert_max_num_queries: Any
) -> None:
    for i in range(10):
        MailServer.objects.create(name=f"Extra {i}", password=PASSWORD, smtp_host="127.0.0.1")
    with django_assert_max_num_queries(40):
        assert admin_client.get("/").status_code == 200
