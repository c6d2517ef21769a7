"""Fetching from the sandbox's Dovecot with XOAUTH2 through the token lifecycle (Outlook)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from django.test import Client

from mailgate.inbox.fetcher import fetch_server
from mailgate.inbox.models import FetchState, IncomingMessage
from mailgate.inbox.store import parse_pending
from mailgate.oauth.models import Grant
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer, ServerStatus
from tests.inbox.conftest import message
from tests.oauth.conftest import Browser, connect


def with_imap(server: MailServer, sandbox: Sandbox, **fields: object) -> MailServer:
    host, _, port = sandbox.address("imap").rpartition(":")
    server.incoming_protocol = "imap"
    server.incoming_host = host
    server.incoming_port = int(port)
    server.incoming_security = "ssl"
    for name, value in fields.items():
        setattr(server, name, value)
    server.save()
    return server


def test_xoauth2_fetch_and_a_revoked_grant_mid_run(
    admin_client: Client,
    revocable_server: MailServer,
    fresh_user: dict[str, str],
    browser: Browser,
    idp: Sandbox,
    settings: object,
    tmp_path: Path,
) -> None:
    settings.MAILGATE_HOME = tmp_path  # type: ignore[attr-defined]
    address = fresh_user["email"]
    server = with_imap(revocable_server, idp, after_fetch="mark_read")
    assert connect(admin_client, browser, server, fresh_user["password"]).status_code == 302
    server.refresh_from_db()
    assert fetch_server(server).counts == {"INBOX": 0}
    idp.dovecot.deliver(address, message("first"))
    report = fetch_server(server)
    assert report.ok and report.counts == {"INBOX": 1}, report.error

    # The user's sign-in is revoked at Microsoft while mailgate runs; the access token runs out.
    idp.control.revoke_grants(address)
    Grant.objects.filter(server=server).update(
        access_expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    )
    idp.dovecot.deliver(address, message("second"))
    report = fetch_server(server)
    assert not report.ok and "AADSTS50173" in report.error
    assert "Connect your Outlook account" in report.diagnosis
    server.refresh_from_db()
    assert server.status == ServerStatus.RECONNECT_REQUIRED
    state = FetchState.objects.get(pk=server.pk)
    assert state.last_error and state.failures == 1
    parse_pending()
    assert list(IncomingMessage.objects.values_list("subject", flat=True)) == ["first"]

    # Reconnected: the message that waited is taken, once.
    assert connect(admin_client, browser, server, fresh_user["password"]).status_code == 302
    server.refresh_from_db()
    report = fetch_server(server)
    assert report.ok and report.counts == {"INBOX": 1}, report.error
    parse_pending()
    assert sorted(IncomingMessage.objects.values_list("subject", flat=True)) == ["first", "second"]
