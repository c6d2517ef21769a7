"""Health findings: each server problem and each deployment problem, named with its fix."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from cryptography.fernet import Fernet
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.test import Client

from mailgate.core.heartbeat import Heartbeat
from mailgate.crypto import rotate_all
from mailgate.diagnostics.health import (
    Finding,
    Level,
    needs_action,
    server_findings,
    server_reports,
    system_findings,
    worst,
)
from mailgate.oauth.models import Grant
from mailgate.oauth.tokens import get_fresh_access_token
from mailgate.outbox.hold import hold_server
from mailgate.outbox.models import OutgoingMessage, ServerState, Status
from mailgate.providers.errors import ClientCredentialsInvalid, ReconnectRequired
from mailgate.providers.google.errors import CLIENT_FIX
from mailgate.providers.microsoft.errors import RECONNECT_FIX, SECRET_VALUE_FIX
from mailgate.providers.replies import diagnose_reply
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer, ServerStatus
from tests.oauth.conftest import Browser, connect, own_app, own_server  # noqa: F401

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
PASSWORD = "pw-plaintext-4711"
CLIENT_SECRET = "client-secret-value-0815"


@pytest.fixture
def frozen() -> Iterator[None]:
    with time_machine.travel(T0, tick=False):
        yield


def make_server(**fields: Any) -> MailServer:
    values: dict[str, Any] = {
        "name": "Sales",
        "auth_method": "password",
        "username": "sales@example.com",
        "password": PASSWORD,
        "smtp_host": "127.0.0.1",
        "smtp_port": 2525,
    }
    if fields.get("auth_method") in ("outlook", "gmail"):
        values.update(password="", client_id="app-id", client_secret=CLIENT_SECRET)
    values.update(fields)
    return MailServer.objects.create(**values)


def add_grant(server: MailServer, **fields: Any) -> Grant:
    values: dict[str, Any] = {
        "provider": server.provider_key,
        "account": server.username,
        "client_id": server.client_id,
        "refresh_token": "refresh-token-plaintext",
        "access_token": "access-token-plaintext",
        "access_expires_at": T0 + dt.timedelta(minutes=50),
        "last_success_at": T0 - dt.timedelta(minutes=10),
    }
    values.update(fields)
    return Grant.objects.create(server=server, **values)


def add_message(server: MailServer, status: str = Status.QUEUED, **fields: Any) -> OutgoingMessage:
    values: dict[str, Any] = {
        "from_address": server.username,
        "to": ["bob@example.net"],
        "message_id": f"<{OutgoingMessage.objects.count()}@example.com>",
        "raw": b"Subject: hi\r\n\r\nhello\r\n",
    }
    values.update(fields)
    return OutgoingMessage.objects.create(server=server, status=status, **values)


def by_check(findings: list[Finding], check: str) -> Finding:
    matches = [f for f in findings if f.check == check]
    assert len(matches) == 1, findings
    return matches[0]


def text_of(findings: list[Finding]) -> str:
    return "\n".join(f"{f.title} {f.detail} {f.fix}" for f in findings)


# -- servers -------------------------------------------------------------------------------


def test_a_tested_password_server_needs_nothing(frozen: None) -> None:
    server = make_server(
        status=ServerStatus.READY, last_test_at=T0, last_test_ok=True, last_test_summary="[ok]"
    )
    findings = server_findings(server)
    assert not needs_action(findings)
    assert by_check(findings, "last_test").title == "Connection test succeeded"


def test_an_untested_server_is_not_a_problem_but_says_how_to_test(frozen: None) -> None:
    findings = server_findings(make_server())
    assert worst(findings) == Level.OK
    assert "press Test Connection" in by_check(findings, "last_test").fix


def test_reconnect_required_names_the_stored_reason_and_the_providers_fix(frozen: None) -> None:
    server = make_server(
        auth_method="outlook",
        status=ServerStatus.RECONNECT_REQUIRED,
        status_detail="Grant no longer valid. Grant no longer valid: Microsoft refused the stored "
        f"grant (AADSTS50173). Fix: {RECONNECT_FIX}",
    )
    add_grant(server, is_dead=True, last_error="Grant no longer valid")
    finding = by_check(server_findings(server), "reconnect_required")
    assert finding.level == Level.ERROR
    assert "AADSTS50173" in finding.detail
    assert "Fix:" not in finding.detail
    assert (
        finding.fix
        == f"Open Settings \u203a Technical \u203a Mail Server \u203a Mail Servers \u203a Sales: {RECONNECT_FIX}"
    )


def test_a_never_connected_oauth_server_asks_for_the_connect_button(frozen: None) -> None:
    server = make_server(
        auth_method="gmail", name="Support", client_secret_expires_on=dt.date(2026, 12, 1)
    )
    finding = by_check(server_findings(server), "not_connected")
    assert finding.level == Level.ERROR
    assert "press Connect your Gmail account" in finding.fix
    assert "sales@example.com" in finding.fix


def test_a_held_queue_is_an_error_with_the_hold_reason_and_the_held_count(frozen: None) -> None:
    server = make_server()
    for _ in range(2):
        add_message(server)
    diagnosis = diagnose_reply(None, "535 5.7.8 Error: authentication failed")
    assert diagnosis is not None
    assert hold_server(server, diagnosis.as_text()) == 2
    server.refresh_from_db()
    finding = by_check(server_findings(server), "queue_held")
    assert finding.level == Level.ERROR
    assert finding.title == "Outgoing queue held (2 messages)"
    assert diagnosis.explanation in finding.detail and "2026-03-02 09:00" in finding.detail
    # The catalogue's fix comes first, then how the queue is released.
    assert finding.fix.startswith(diagnosis.fix)
    assert "Test Connection" in finding.fix and "nothing held is lost" in finding.fix


@pytest.mark.parametrize(
    ("expires", "level", "title"),
    [
        (dt.date(2026, 3, 1), Level.ERROR, "Client secret expired on 2026-03-01"),
        (dt.date(2026, 3, 2), Level.WARNING, "Client secret expires today (2026-03-02)"),
        (dt.date(2026, 3, 3), Level.WARNING, "Client secret expires in 1 day (2026-03-03)"),
        (dt.date(2026, 4, 1), Level.WARNING, "Client secret expires in 30 days (2026-04-01)"),
        (dt.date(2026, 4, 2), None, ""),
    ],
)
def test_client_secret_expiry_is_an_error_once_past_and_a_warning_within_30_days(
    frozen: None, expires: dt.date, level: Level | None, title: str
) -> None:
    server = make_server(auth_method="outlook", client_secret_expires_on=expires)
    add_grant(server)
    findings = [f for f in server_findings(server) if f.check.startswith("secret_")]
    if level is None:
        assert findings == []
        return
    assert [(f.level, f.title) for f in findings] == [(level, title)]
    # The provider's own advice for a refused secret: where to create a new one.
    assert SECRET_VALUE_FIX in findings[0].fix
    if level == Level.WARNING:
        assert "at most 24 months" in findings[0].detail


def test_gmail_secrets_get_googles_advice(frozen: None) -> None:
    server = make_server(auth_method="gmail", client_secret_expires_on=dt.date(2026, 2, 1))
    add_grant(server)
    assert CLIENT_FIX in by_check(server_findings(server), "secret_expired").fix


def test_a_microsoft_secret_without_expiry_date_is_a_warning_but_not_a_google_one(
    frozen: None,
) -> None:
    outlook = make_server(auth_method="outlook")
    gmail = make_server(auth_method="gmail", name="Gmail")
    add_grant(outlook)
    add_grant(gmail)
    finding = by_check(server_findings(outlook), "secret_expiry_unknown")
    assert finding.level == Level.WARNING
    assert "Client Secret Expires On" in finding.fix
    assert not [f for f in server_findings(gmail) if f.check.startswith("secret_")]


def test_an_expiry_beyond_microsofts_24_months_is_questioned(frozen: None) -> None:
    server = make_server(auth_method="outlook", client_secret_expires_on=dt.date(2029, 1, 1))
    add_grant(server)
    assert by_check(server_findings(server), "secret_expiry_implausible").level == Level.WARNING


def test_refused_client_credentials_are_an_error_with_the_stored_diagnosis(frozen: None) -> None:
    server = make_server(
        auth_method="outlook",
        client_secret_expires_on=dt.date(2026, 9, 1),
        status=ServerStatus.FAILING,
        status_detail="Client secret expired (AADSTS7000222).",
    )
    add_grant(
        server,
        last_error="Client secret expired (AADSTS7000222)",
        last_error_code="AADSTS7000222",
        last_error_diagnosis=f"Client secret expired (AADSTS7000222): it expired. Fix: {SECRET_VALUE_FIX}",
        last_error_at=T0 - dt.timedelta(minutes=3),
        failures=1,
        next_attempt_at=T0 + dt.timedelta(minutes=2),
    )
    findings = server_findings(server)
    finding = by_check(findings, "token_refresh")
    assert finding.level == Level.ERROR
    assert finding.title == "Token refresh failing"
    assert "AADSTS7000222" in finding.detail and "retries at 2026-03-02 09:02:00" in finding.detail
    assert finding.fix.endswith(SECRET_VALUE_FIX)
    assert findings[0] is finding  # errors come first
    assert not [f for f in findings if f.check == "failing"]  # the same problem, told once


@pytest.mark.parametrize(("failures", "level"), [(1, Level.OK), (3, Level.WARNING)])
def test_a_transient_token_failure_is_reported_once_it_persists(
    frozen: None, failures: int, level: Level
) -> None:
    server = make_server(auth_method="outlook", client_secret_expires_on=dt.date(2026, 9, 1))
    add_grant(
        server,
        last_error="Microsoft's token endpoint is unavailable: HTTP 503",
        last_error_at=T0,
        failures=failures,
        next_attempt_at=T0 + dt.timedelta(minutes=2),
    )
    assert by_check(server_findings(server), "token_refresh").level == level


def test_a_failed_connection_test_is_an_error_with_its_step_and_diagnosis(frozen: None) -> None:
    server = make_server(
        status=ServerStatus.FAILING,
        status_detail="Connection test failed at step 'Authenticate'",
        last_test_at=T0 - dt.timedelta(hours=1),
        last_test_ok=False,
        last_test_summary="[ok] Connect: 220 ready\n[FAILED] Authenticate: 535 5.7.8 Bad "
        "credentials\nDiagnosis: Wrong password. Fix: Enter the mailbox password again.",
    )
    finding = by_check(server_findings(server), "last_test")
    assert finding.level == Level.ERROR
    assert finding.detail == (
        "2026-03-02 08:00 UTC: Authenticate: 535 5.7.8 Bad credentials — Wrong password."
    )
    assert "(Enter the mailbox password again.)" in finding.fix
    assert finding.fix.endswith("then press Test Connection.")


@pytest.mark.parametrize(
    ("pause", "level"),
    [(dt.timedelta(seconds=40), Level.OK), (dt.timedelta(hours=1), Level.WARNING)],
)
def test_a_throttle_is_only_a_warning_when_it_is_long(
    frozen: None, pause: dt.timedelta, level: Level
) -> None:
    server = make_server()
    ServerState.objects.create(
        server=server, next_allowed_at=T0 + pause, throttle_reason="Sender throttled (Exchange)."
    )
    finding = by_check(server_findings(server), "throttled")
    assert finding.level == level
    assert "Sender throttled (Exchange)." in finding.detail


def test_a_throttle_in_the_past_is_not_mentioned(frozen: None) -> None:
    server = make_server()
    ServerState.objects.create(server=server, next_allowed_at=T0 - dt.timedelta(seconds=1))
    assert not [f for f in server_findings(server) if f.check == "throttled"]


def test_failures_of_the_last_24_hours_are_counted_with_the_latest_diagnosis(frozen: None) -> None:
    server = make_server()
    old = add_message(server, Status.FAILED, last_reply="550 5.1.1 old")
    OutgoingMessage.objects.filter(pk=old.pk).update(updated_at=T0 - dt.timedelta(hours=25))
    add_message(server, Status.FAILED, last_reply="550 5.1.1 first")
    latest = add_message(
        server, Status.FAILED, last_reply="550 5.1.1 User unknown", diagnosis="Bad address."
    )
    OutgoingMessage.objects.filter(pk=latest.pk).update(updated_at=T0 + dt.timedelta(seconds=1))
    finding = by_check(server_findings(server), "failed_messages")
    assert finding.level == Level.WARNING
    assert finding.title == "2 messages failed in the last 24 hours"
    assert f"#{latest.pk}" in finding.detail and "User unknown — Bad address." in finding.detail


def test_mail_waiting_for_more_than_an_hour_names_the_oldest_message(frozen: None) -> None:
    server = make_server()
    add_message(server, created_at=T0 - dt.timedelta(minutes=59))
    assert not [f for f in server_findings(server) if f.check == "late_messages"]
    oldest = add_message(
        server,
        Status.DEFERRED,
        created_at=T0 - dt.timedelta(hours=3),
        attempts=4,
        last_reply="451 4.3.0 try later",
    )
    finding = by_check(server_findings(server), "late_messages")
    assert finding.title == "Mail waiting for 3 hours"
    assert f"#{oldest.pk}" in finding.detail and "deferred after 4 attempts" in finding.detail
    assert "451 4.3.0 try later" in finding.detail


def test_an_inactive_server_with_queued_mail_is_a_warning(frozen: None) -> None:
    server = make_server(active=False)
    assert [f.check for f in server_findings(server)] == ["inactive"]
    add_message(server)
    finding = by_check(server_findings(server), "inactive_with_mail")
    assert finding.level == Level.WARNING
    assert "tick Active" in finding.fix


def test_reports_count_the_queue_per_server_with_a_bounded_number_of_queries(
    frozen: None, django_assert_max_num_queries: Any
) -> None:
    servers = [make_server(name=f"S{i}") for i in range(6)]
    for status in (Status.QUEUED, Status.QUEUED, Status.DEFERRED, Status.HELD, Status.SENDING):
        add_message(servers[0], status)
    add_message(servers[0], Status.SENT, sent_at=T0 - dt.timedelta(hours=1))
    add_message(servers[0], Status.SENT, sent_at=T0 - dt.timedelta(hours=30))
    add_message(servers[1], Status.FAILED)
    with django_assert_max_num_queries(10):
        reports = server_reports()
    assert len(reports) == 6
    first = reports[0].queue
    assert (first.queued, first.deferred, first.held, first.sending) == (2, 1, 1, 1)
    assert (first.sent_24h, first.failed_24h) == (1, 0)
    assert reports[1].queue.failed_24h == 1
    assert reports[5].queue.waiting == 0


def test_no_secret_reaches_a_finding(frozen: None) -> None:
    server = make_server(
        auth_method="outlook",
        status=ServerStatus.FAILING,
        client_secret_expires_on=dt.date(2026, 1, 1),
    )
    add_grant(server, last_error="refused", failures=5)
    hold_server(server, "held")
    text = text_of(server_findings(server)) + text_of(system_findings())
    for secret in (CLIENT_SECRET, "refresh-token-plaintext", "access-token-plaintext"):
        assert secret not in text


# -- against the sandbox's identity platform ---------------------------------------------------


def test_a_grant_revoked_at_microsoft_shows_reconnect_required_with_microsofts_reason(
    admin_client: Client,
    revocable_server: MailServer,
    fresh_user: dict[str, str],
    browser: Browser,
    idp: Sandbox,
) -> None:
    server = revocable_server
    assert connect(admin_client, browser, server, fresh_user["password"]).status_code == 302
    server.refresh_from_db()
    assert by_check(server_findings(server), "token").title == "Token Valid"
    idp.control.revoke_grants(server.username)
    Grant.objects.filter(server=server).update(access_expires_at=None)
    with pytest.raises(ReconnectRequired):
        get_fresh_access_token(server)
    server.refresh_from_db()
    finding = by_check(server_findings(server), "reconnect_required")
    assert "AADSTS50173" in finding.detail
    assert finding.fix.endswith(RECONNECT_FIX)


def test_a_secret_expired_at_microsoft_shows_a_failing_refresh_with_the_secret_fix(
    admin_client: Client,
    own_server: MailServer,  # noqa: F811
    own_app: dict[str, str],  # noqa: F811
    browser: Browser,
    idp: Sandbox,
) -> None:
    assert connect(admin_client, browser, own_server, idp.demo["password"]).status_code == 302
    idp.control.expire_secret(own_app["client_id"])
    Grant.objects.filter(server=own_server).update(access_expires_at=None)
    with pytest.raises(ClientCredentialsInvalid):
        get_fresh_access_token(own_server)
    own_server.refresh_from_db()
    finding = by_check(server_findings(own_server), "token_refresh")
    assert finding.level == Level.ERROR
    assert "AADSTS7000222" in finding.detail
    assert SECRET_VALUE_FIX in finding.fix
    assert own_app["secret"] not in text_of(server_findings(own_server))


# -- the deployment ------------------------------------------------------------------------


def test_without_a_worker_queued_mail_is_an_error_naming_the_command(frozen: None) -> None:
    add_message(make_server())
    finding = by_check(system_findings(), "worker")
    assert finding.level == Level.ERROR
    assert finding.title == "No worker has run in the last 5 minutes"
    assert "Queued mail is not being sent (1 message waiting)" in finding.detail
    assert finding.fix == "Start `mailgate worker` (or `mailgate run`, which runs one)."


def test_without_a_worker_and_without_mail_it_is_a_warning(frozen: None) -> None:
    finding = by_check(system_findings(), "worker")
    assert finding.level == Level.WARNING
    assert "No worker has run in the last day." in finding.detail


def test_a_worker_seen_recently_is_ok_and_a_stale_one_is_named(frozen: None) -> None:
    Heartbeat(holder="mx1:42").beat(now=T0 - dt.timedelta(minutes=4))
    assert by_check(system_findings(), "worker").level == Level.OK
    finding = by_check(system_findings(now=T0 + dt.timedelta(minutes=2)), "worker")
    assert finding.level == Level.WARNING
    assert "was seen 2026-03-02 08:56:00 UTC" in finding.detail


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://mail.example.com:8000", True),
        ("https://mail.example.com", False),
        ("http://127.0.0.1:8000", False),
        ("http://localhost:8000", False),
    ],
)
def test_a_plain_http_public_url_outside_loopback_is_a_warning(
    settings: Any, url: str, warned: bool
) -> None:
    settings.MAILGATE_PUBLIC_URL = url
    found = [f for f in system_findings() if f.check == "public_url"]
    assert bool(found) == warned
    if warned:
        assert found[0].level == Level.WARNING
        assert "https" in found[0].fix and url in found[0].detail


def test_secrets_under_an_older_key_ask_for_rotate_keys_until_it_ran(settings: Any) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    settings.MAILGATE_ENCRYPTION_KEYS = [old]
    make_server(auth_method="outlook", client_secret_expires_on=dt.date(2099, 1, 1))
    assert by_check(system_findings(), "encryption_keys").level == Level.OK
    settings.MAILGATE_ENCRYPTION_KEYS = [new, old]
    finding = by_check(system_findings(), "encryption_keys")
    assert finding.level == Level.WARNING
    assert finding.title == "1 secret still encrypted with an older key"
    assert "servers.MailServer.client_secret: 1" in finding.detail
    assert finding.fix.startswith("Run `mailgate rotate-keys`")
    rotate_all()
    finding = by_check(system_findings(), "encryption_keys")
    assert finding.level == Level.OK and "1 stored secret checked" in finding.detail


def test_a_secret_no_configured_key_reads_is_an_error(settings: Any) -> None:
    settings.MAILGATE_ENCRYPTION_KEYS = [Fernet.generate_key()]
    make_server()  # its password under that key
    settings.MAILGATE_ENCRYPTION_KEYS = [Fernet.generate_key()]
    finding = by_check(system_findings(), "encryption_keys")
    assert finding.level == Level.ERROR
    assert finding.title == "1 stored secret cannot be decrypted"
    assert "servers.MailServer.password: 1" in finding.detail
    assert "mailgate rotate-keys" in finding.fix


def test_unapplied_migrations_are_an_error_naming_them() -> None:
    assert by_check(system_findings(), "migrations").level == Level.OK
    MigrationRecorder(connection).migration_qs.filter(app="core", name="0001_initial").delete()
    finding = by_check(system_findings(), "migrations")
    assert finding.level == Level.ERROR
    assert finding.title == "1 database migration not applied"
    assert "core.0001_initial" in finding.detail
    assert "`mailgate migrate`" in finding.fix


def test_a_reachable_database_is_reported_ok() -> None:
    finding = by_check(system_findings(), "database")
    assert finding.level == Level.OK and finding.detail.startswith(f"{connection.vendor}, size ")
    assert finding.detail.endswith(" MB")
