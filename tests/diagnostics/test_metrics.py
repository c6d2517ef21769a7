"""`GET /metrics`: Prometheus text that parses, with gauges computed from the database."""

from __future__ import annotations

import datetime as dt
import math
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import time_machine
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from mailgate.core.heartbeat import Heartbeat
from mailgate.oauth.models import Grant
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.servers.models import MailServer, ServerStatus

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
CLIENT_SECRET = "client-secret-value-0815"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def frozen() -> Iterator[None]:
    with time_machine.travel(T0, tick=False):
        yield


def scrape(client: Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def outlook(db: None) -> MailServer:
    server = MailServer.objects.create(
        name="Sales",
        auth_method="outlook",
        username="sales@contoso.example",
        client_id="app",
        client_secret=CLIENT_SECRET,
        client_secret_expires_on=dt.date(2026, 3, 12),
        status=ServerStatus.TOKEN_VALID,
        smtp_host="127.0.0.1",
    )
    Grant.objects.create(
        server=server,
        provider="microsoft",
        account=server.username,
        refresh_token="refresh-token-plaintext",
        access_token="access-token-plaintext",
        access_expires_at=T0 + dt.timedelta(minutes=45),
        last_success_at=T0,
    )
    return server


def add_message(server: MailServer, status: str) -> None:
    OutgoingMessage.objects.create(
        server=server, status=status, from_address=server.username, raw=b"x"
    )


def test_it_is_open_without_a_session_and_parses(stranger_client: Client, frozen: None) -> None:
    samples = scrape(stranger_client)
    assert value(samples, "mailgate_database_up") == 1
    # A registry of its own: no process or platform collectors.
    assert not [name for name, _ in samples if name.startswith(("process_", "python_"))]


def test_outbox_messages_by_server_and_status_include_zeros(
    stranger_client: Client, outlook: MailServer, frozen: None
) -> None:
    other = MailServer.objects.create(name="Support", status=ServerStatus.READY, active=False)
    for status in (Status.QUEUED, Status.QUEUED, Status.HELD, Status.SENT):
        add_message(outlook, status)
    add_message(other, Status.FAILED)
    samples = scrape(stranger_client)
    assert value(samples, "mailgate_outbox_messages", server="Sales", status="queued") == 2
    assert value(samples, "mailgate_outbox_messages", server="Sales", status="held") == 1
    assert value(samples, "mailgate_outbox_messages", server="Sales", status="sent") == 1
    assert value(samples, "mailgate_outbox_messages", server="Sales", status="failed") == 0
    assert value(samples, "mailgate_outbox_messages", server="Support", status="failed") == 1
    assert value(samples, "mailgate_servers", status="token_valid") == 1
    assert value(samples, "mailgate_servers", status="ready") == 1
    assert value(samples, "mailgate_servers", status="reconnect_required") == 0
    assert value(samples, "mailgate_server_active", server="Support") == 0
    assert value(samples, "mailgate_server_held", server="Sales") == 0


def test_secret_and_token_expiry_are_seconds_from_now(
    stranger_client: Client, outlook: MailServer, frozen: None
) -> None:
    samples = scrape(stranger_client)
    # 2026-03-12 00:00 UTC is 9 days and 15 hours after 2026-03-02 09:00 UTC.
    expected = dt.timedelta(days=9, hours=15).total_seconds()
    assert value(samples, "mailgate_client_secret_expiry_seconds", server="Sales") == expected
    assert value(samples, "mailgate_access_token_expiry_seconds", server="Sales") == 45 * 60
    # The secret expires within 30 days: one warning, as the dashboard shows it.
    assert value(samples, "mailgate_server_problems", server="Sales", level="warning") == 1
    assert value(samples, "mailgate_server_problems", server="Sales", level="error") == 0


def test_worker_gauges_follow_the_heartbeat(stranger_client: Client, frozen: None) -> None:
    samples = scrape(stranger_client)
    assert math.isinf(value(samples, "mailgate_worker_last_seen_seconds"))
    assert value(samples, "mailgate_workers") == 0
    Heartbeat(holder="mx1:1").beat(now=T0 - dt.timedelta(seconds=42))
    samples = scrape(stranger_client)
    assert value(samples, "mailgate_worker_last_seen_seconds") == 42
    assert value(samples, "mailgate_workers") == 1


def test_no_secret_is_exposed(stranger_client: Client, outlook: MailServer) -> None:
    text = stranger_client.get("/metrics").content.decode()
    for secret in (CLIENT_SECRET, "refresh-token-plaintext", "access-token-plaintext"):
        assert secret not in text


def test_only_get_is_allowed(stranger_client: Client) -> None:
    assert stranger_client.post("/metrics").status_code == 405


@pytest.mark.nodb
def test_an_unreachable_database_is_reported_as_a_zero_gauge(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import django
        django.setup()
        from django.test import Client
        response = Client().get("/metrics", HTTP_HOST="127.0.0.1")
        print(response.status_code)
        print(response.content.decode())
        """
    )
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "mailgate.settings",
            "MAILGATE_HOME": str(tmp_path),
            "MAILGATE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed.getsockname()[1]}/x",
        }
        result = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    status, _, body = result.stdout.partition("\n")
    assert status == "200"
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert list(families) == ["mailgate_database_up"]
    assert families["mailgate_database_up"].samples[0].value == 0
