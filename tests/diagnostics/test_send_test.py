"""Send test message from the server page: a real message through the chosen server, the outcome
shown inline in the connection panel."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from django.db import connection
from django.test import Client

from mailgate.diagnostics import send_test
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.outbox.worker import Deliverer
from mailgate.servers.models import MailServer
from tests.smtpsink import SMTPSink


@pytest.fixture
def sink() -> Iterator[SMTPSink]:
    with SMTPSink() as running:
        yield running


@pytest.fixture
def worker(transactional_db: None) -> Iterator[None]:
    """A worker delivering in a thread while the request waits, as `mailgate run` does."""
    stop = threading.Event()
    deliverer = Deliverer()

    def loop() -> None:
        while not stop.wait(0.05):
            deliverer.step(stop)
        deliverer.close_all()
        connection.close()  # this thread's own connection, so the test database can be dropped

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


def _server(sink: SMTPSink, **extra: object) -> MailServer:
    values = {
        "name": "Relay",
        "from_filter": "app@contoso.example",  # no Username: the sink asks for no sign-in
        "smtp_host": "127.0.0.1",
        "smtp_port": sink.port,
        "smtp_security": "none",
        "status": "ready",
    }
    values.update(extra)
    return MailServer.objects.create(**values)


def _admin_client() -> Client:
    from django.contrib.auth.models import User

    admin = User.objects.create_user(
        "root@example.com", "root@example.com", "x" * 12, is_staff=True
    )
    client = Client()
    client.force_login(admin)
    return client


def test_a_test_message_is_sent_and_its_result_shown_in_the_panel(
    sink: SMTPSink, worker: None
) -> None:
    server = _server(sink)
    client = _admin_client()
    page = client.get(f"/settings/technical/mail-servers/{server.pk}/").content.decode()
    assert 'value="root@example.com"' in page  # the signed-in user's address, ready to send
    response = client.post(
        f"/settings/technical/mail-servers/{server.pk}/send-test", {"to": "me@example.org"}
    )
    assert response["Location"].endswith(
        f"/settings/technical/mail-servers/{server.pk}/#connection"
    )
    page = client.get(response["Location"]).content.decode()
    assert "Test message sent" in page
    assert "Sent from app@contoso.example to me@example.org." in page
    message = OutgoingMessage.objects.get()
    assert message.status == Status.SENT and message.server == server
    assert sink.received[0].rcpt_tos == ["me@example.org"]
    # Shown once: a reload no longer shows it.
    assert "Test message sent" not in client.get(response["Location"]).content.decode()


def test_a_never_connected_server_says_connect_your_account(db: None, sink: SMTPSink) -> None:
    server = _server(
        sink, auth_method="outlook", status="not_connected", username="app@contoso.example"
    )
    result = send_test.send_test_message(server, "me@example.org", wait=0)
    assert result.outcome == "held"
    assert "connect your account" in result.text


def test_without_a_worker_it_says_so(db: None, sink: SMTPSink) -> None:
    result = send_test.send_test_message(_server(sink), "me@example.org", wait=0)
    assert result.outcome == "queued" and "is the worker running" in result.text


def test_a_bad_address_is_refused_naming_the_field(db: None, sink: SMTPSink) -> None:
    result = send_test.send_test_message(_server(sink), "me@", wait=0)
    assert result.outcome == "refused" and result.text.startswith("to")


def test_a_viewer_cannot_send(viewer_client: Client, sink: SMTPSink) -> None:
    server = _server(sink)
    page = viewer_client.get(f"/settings/technical/mail-servers/{server.pk}/").content.decode()
    assert "Send test message" not in page
    response = viewer_client.post(
        f"/settings/technical/mail-servers/{server.pk}/send-test", {"to": "me@example.org"}
    )
    assert response.status_code == 403
