"""Test Connection for incoming mail: IMAP and POP3 with XOAUTH2 through the sandbox's real Dovecot."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import Client

from mailgate.connections import imap_transport, pop3_transport
from mailgate.diagnostics.connection import run_connection_test
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer
from mailgate.transports.base import TransportError
from tests.oauth.conftest import Browser, connect


@pytest.fixture(scope="module")
def mg_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """This module's sandbox runs Dovecot too (it must be installed: apt-get install dovecot-imapd
    dovecot-pop3d)."""
    with Sandbox(tmp_path_factory.mktemp("sandbox-mail"), dovecot=True) as sandbox:
        yield sandbox


def incoming(server: MailServer, sandbox: Sandbox, protocol: str) -> MailServer:
    host, _, port = sandbox.address(protocol).rpartition(":")
    server.incoming_protocol = protocol
    server.incoming_host = host
    server.incoming_port = int(port)
    server.incoming_security = "ssl"
    server.save()
    return server


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_incoming_steps_pass_with_xoauth2(
    admin_client: Client,
    outlook_server: MailServer,
    browser: Browser,
    idp: Sandbox,
    protocol: str,
) -> None:
    server = incoming(outlook_server, idp, protocol)
    assert connect(admin_client, browser, server, idp.demo["password"]).status_code == 302
    result = run_connection_test(server)
    assert result.ok, result.summary()
    label = protocol.upper()
    names = [s.name for s in result.steps]
    assert f"{label} authenticate (XOAUTH2)" in names
    assert names[-1] in ("IMAP select folder INBOX", "POP3 open mailbox (STAT)")
    assert "certificate verified" in {s.name: s.detail for s in result.steps}[f"{label} TLS"]


def test_a_token_without_the_imap_scope_is_refused_by_imap(
    admin_client: Client,
    revocable_server: MailServer,
    fresh_user: dict[str, str],
    browser: Browser,
    idp: Sandbox,
) -> None:
    # A new user connected for sending only: the grant lacks IMAP.AccessAsUser.All.
    assert (
        connect(admin_client, browser, revocable_server, fresh_user["password"]).status_code == 302
    )
    server = incoming(revocable_server, idp, "imap")
    result = run_connection_test(server)
    failed = result.failed
    assert failed is not None and failed.name == "IMAP authenticate (XOAUTH2)"
    assert "Permissions missing" in failed.diagnosis
    assert "IMAP.AccessAsUser.All" in failed.diagnosis
    assert "Connect your Outlook account" in failed.diagnosis


def test_the_imap_transport_opens_and_closes(
    admin_client: Client, outlook_server: MailServer, browser: Browser, idp: Sandbox
) -> None:
    server = incoming(outlook_server, idp, "imap")
    assert connect(admin_client, browser, server, idp.demo["password"]).status_code == 302
    server.refresh_from_db()
    with imap_transport(server, timeout=10) as transport:
        assert transport.is_open
        assert "messages" in str(transport.select_folder())
    assert not transport.is_open


def test_the_pop3_transport_refuses_a_missing_host(db: None) -> None:
    server = MailServer(name="x", auth_method="password", incoming_protocol="pop3")
    with pytest.raises(TransportError) as caught:
        pop3_transport(server).open()
    assert caught.value.step == "connect" and caught.value.permanent
