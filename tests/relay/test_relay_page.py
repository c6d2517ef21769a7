"""Settings > SMTP Relay: the relay clients and the settings an application needs."""

from __future__ import annotations

import datetime as dt

from django.test import Client
from django.utils import timezone

from mailgate.conf import RelayConfig
from mailgate.keys.models import APIKey
from mailgate.outbox import enqueue
from mailgate.outbox.models import OutgoingMessage
from mailgate.servers.models import MailServer


def test_the_page_lists_send_keys_with_last_message_and_todays_count(
    admin_client: Client, settings: object
) -> None:
    settings.MAILGATE_RELAY = RelayConfig(  # type: ignore[attr-defined]
        listen=("0.0.0.0", 587), listen_tls=("127.0.0.1", 465)
    )
    settings.MAILGATE_PUBLIC_URL = "https://mail.contoso.example"  # type: ignore[attr-defined]
    MailServer.objects.create(
        name="Office", auth_method="password", smtp_host="127.0.0.1", smtp_security="none"
    )
    erp, secret = APIKey.issue("erp", scope="send")
    APIKey.objects.filter(pk=erp.pk).update(
        last_used_at=timezone.make_aware(dt.datetime(2026, 3, 4, 5, 6))
    )
    APIKey.issue("dashboards", scope="read")
    for day in (0, 0, 1):
        message = enqueue(
            from_address="erp@contoso.example",
            to=["ann@example.org"],
            text="x",
            source="smtp",
            submitted_by=erp.owner_tag,
        )
        OutgoingMessage.objects.filter(pk=message.pk).update(
            created_at=timezone.now() - dt.timedelta(days=day)
        )
    page = admin_client.get("/settings/smtp-relay/").content.decode()
    assert "<code>mail.contoso.example</code></td><td><code>587</code></td><td>STARTTLS" in page
    assert "<code>127.0.0.1</code></td><td><code>465</code></td><td>SSL/TLS" in page
    row = page.split('id="relay-clients"')[1]
    assert "<td>erp</td>" in row and "<td>2</td>" in row
    assert '<th scope="col">Last use</th>' in page and "<td>2026-03-04 05:06</td>" in row
    assert "dashboards" not in row  # a read key cannot send
    assert secret not in page


def test_the_page_says_how_to_turn_the_relay_on(admin_client: Client, settings: object) -> None:
    settings.MAILGATE_RELAY = RelayConfig()  # type: ignore[attr-defined]
    page = admin_client.get("/settings/smtp-relay/").content.decode()
    assert 'id="relay-off"' in page and "MAILGATE_SMTP_LISTEN" in page
    assert "SMTP Relay" in admin_client.get("/settings/").content.decode()


def test_the_page_says_whether_this_machine_may_log_in_without_tls(
    admin_client: Client, settings: object
) -> None:
    settings.MAILGATE_RELAY = RelayConfig(listen=("0.0.0.0", 587))  # type: ignore[attr-defined]
    page = admin_client.get("/settings/smtp-relay/").content.decode()
    assert "on this machine (loopback) may also log in without TLS" in page
    settings.MAILGATE_RELAY = RelayConfig(  # type: ignore[attr-defined]
        listen=("0.0.0.0", 587), plain_on_loopback=False
    )
    page = admin_client.get("/settings/smtp-relay/").content.decode()
    assert "on this machine too, logs in only over STARTTLS or SSL/TLS" in page
