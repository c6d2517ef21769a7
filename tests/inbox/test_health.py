"""The state of incoming mail on the dashboard, in `mailgate doctor`'s findings and in /metrics."""

from __future__ import annotations

from pathlib import Path

from django.test import Client

from mailgate.diagnostics.health import Level, server_findings
from mailgate.inbox import fetcher
from mailgate.inbox.fetcher import fetch_server
from mailgate.inbox.models import IncomingMessage, Status
from mailgate.servers.models import MailServer
from tests.inbox.conftest import Mailbox, PasswordDovecot, make_server, message


def test_repeated_failures_flag_the_server_with_the_diagnosis(
    password_dovecot: PasswordDovecot,
    mailbox: Mailbox,
    trust: None,
    inbox_home: Path,
    admin_client: Client,
) -> None:
    server = make_server(password_dovecot, mailbox, password="wrong")
    fetch_server(server)
    first = {f.check: f for f in server_findings(server)}["inbox_fetch"]
    assert first.level == Level.WARNING and "authentication failed" in first.detail
    for _ in range(fetcher.FLAG_AFTER_FAILURES - 1):
        fetch_server(server)
    finding = {f.check: f for f in server_findings(server)}["inbox_fetch"]
    assert finding.level == Level.ERROR
    assert finding.title == "Fetching incoming mail keeps failing"
    assert "5 failures in a row" in finding.detail
    assert "Check Username and Password" in finding.fix
    page = admin_client.get("/").content.decode()
    assert "Fetching incoming mail keeps failing" in page
    metrics = admin_client.get("/metrics").content.decode()
    assert f'mailgate_inbox_fetch_errors{{server="{server.name}"}} 5.0' in metrics
    assert f'mailgate_inbox_lag_seconds{{server="{server.name}"}} +Inf' in metrics


def test_a_healthy_mailbox_shows_its_last_fetch_lag_and_counts(
    imap_server: MailServer, mailbox: Mailbox, admin_client: Client
) -> None:
    imap_server.fetch_existing = True
    imap_server.save()
    mailbox.append(message("one"))
    assert fetch_server(imap_server).ok
    finding = {f.check: f for f in server_findings(imap_server)}["inbox_fetch"]
    assert finding.level == Level.OK and "behind" in finding.detail
    IncomingMessage.objects.update(status=Status.QUARANTINED)
    quarantine = {f.check: f for f in server_findings(imap_server)}["inbox_quarantine"]
    assert (
        quarantine.level == Level.WARNING and "1 incoming message in Quarantine" in quarantine.title
    )
    metrics = admin_client.get("/metrics").content.decode()
    name = imap_server.name
    assert f'mailgate_inbox_fetched_messages{{server="{name}"}} 1.0' in metrics
    assert f'mailgate_inbox_messages{{server="{name}",status="quarantined"}} 1.0' in metrics
    assert f'mailgate_inbox_lag_seconds{{server="{name}"}}' in metrics
