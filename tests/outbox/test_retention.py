"""Retention: finished messages lose their content after MAILGATE_RETENTION_DAYS, keep the rest."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from django.utils import timezone

from mailgate.conf import SettingsError
from mailgate.outbox import conf, enqueue, retention
from mailgate.outbox.actions import ActionRefused, retry_message
from mailgate.outbox.models import DeliveryAttempt, Outcome, OutgoingMessage, Status
from mailgate.servers.models import MailServer

pytestmark = pytest.mark.django_db


def _message(server: MailServer, status: str, days_ago: float) -> OutgoingMessage:
    message = enqueue(
        from_address="app@example.com", to=["a@example.org"], subject="Invoice", text="x" * 500
    )
    when = timezone.now() - dt.timedelta(days=days_ago)
    OutgoingMessage.objects.filter(pk=message.pk).update(status=status, updated_at=when)
    DeliveryAttempt.objects.create(
        message=message, server=server, outcome=Outcome.SENT, reply="250 OK"
    )
    return message


def test_finished_messages_past_retention_lose_their_content_and_keep_the_rest(
    make_server: Callable[..., MailServer],
) -> None:
    server = make_server()
    old_sent = _message(server, Status.SENT, 31)
    old_failed = _message(server, Status.FAILED, 40)
    old_cancelled = _message(server, Status.CANCELLED, 45)
    recent = _message(server, Status.SENT, 29)
    waiting = _message(server, Status.DEFERRED, 60)  # not finished: never purged
    assert retention.purge_bodies(dt.timedelta(days=30)) == 3
    for message in (old_sent, old_failed, old_cancelled):
        row = OutgoingMessage.objects.get(pk=message.pk)
        assert bytes(row.raw) == b"" and row.purged_at is not None
        assert (row.subject, row.to, row.message_id) == (
            "Invoice",
            ["a@example.org"],
            message.message_id,
        )
        assert row.attempt_log.count() == 1
    for message in (recent, waiting):
        assert len(bytes(OutgoingMessage.objects.get(pk=message.pk).raw)) > 500
    with pytest.raises(ActionRefused, match="purged"):
        retry_message(old_failed.pk)
    assert retention.purge_bodies(dt.timedelta(days=30)) == 0


def test_purge_command_takes_days_and_refuses_a_bad_value(
    make_server: Callable[..., MailServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_server()
    _message(server, Status.SENT, 3)
    call_command("purge", "--older-than", "2")
    assert (
        "Purged the content of 1 message finished more than 2 days ago." in capsys.readouterr().out
    )
    with pytest.raises(CommandError, match="--older-than must be a number of days, not 'soon'"):
        call_command("purge", "--older-than", "soon")
    with pytest.raises(CommandError, match="--older-than must be 0 or more days"):
        call_command("purge", "--older-than", "-1")


def test_the_worker_step_applies_the_setting_with_zero_keeping_everything(
    make_server: Callable[..., MailServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server()
    old = _message(server, Status.SENT, 31)
    monkeypatch.setattr(retention, "_last_run", 0.0)
    with override_settings(MAILGATE_RETENTION_DAYS=0):
        assert retention.purge_step() is False
    assert retention.purge_step() is True
    assert OutgoingMessage.objects.get(pk=old.pk).purged_at is not None
    assert retention.purge_step() is False  # at most once an hour
    assert conf.get().retention_days == 30
    with override_settings(MAILGATE_RETENTION_DAYS="a month"), pytest.raises(SettingsError) as err:
        conf.get()
    assert "MAILGATE_RETENTION_DAYS" in str(err.value)


def test_the_dashboard_shows_the_database_size(admin_client: Client) -> None:
    page = admin_client.get("/").content.decode()
    assert "Database reachable" in page and " MB" in page
