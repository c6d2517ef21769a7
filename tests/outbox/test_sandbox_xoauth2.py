"""XOAUTH2 delivery through the sandbox's Exchange-like SMTP server; hold on a revoked grant, resume on reconnect."""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from mailgate.oauth.models import Grant
from mailgate.oauth.tokens import store_grant
from mailgate.outbox import enqueue
from mailgate.outbox.models import DeliveryAttempt, OutgoingMessage, Status
from mailgate.outbox.worker import Deliverer
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer
from tests.sandbox_fixtures import SMTP_SCOPE, demo_tokens


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("outbox-sandbox"), dovecot=False) as sandbox:
        yield sandbox


@pytest.fixture
def idp(exchange: Sandbox, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    for key, value in exchange.env().items():
        if key.startswith("MAILGATE_") and not key.startswith("MAILGATE_SANDBOX_"):
            setattr(settings, key, value)
    monkeypatch.setenv("SSL_CERT_FILE", str(exchange.ca_file))
    monkeypatch.setattr("mailgate.oauth.tokens.RETRY_PAUSES", (0.05,))
    exchange.control.clear_faults()
    exchange.control.reset_counters()
    yield exchange
    exchange.control.clear_faults()


def connect(sandbox: Sandbox, server: MailServer) -> None:
    """Sign in as the demo user through the sandbox's pages and store the grant, as the callback does."""
    tokens = demo_tokens(sandbox.login_url, sandbox.ca_file, sandbox.demo, state="outbox")
    store_grant(server, tokens=tokens, account=sandbox.demo["user"], scopes=SMTP_SCOPE.split())


@pytest.fixture
def outlook(idp: Sandbox, db: None) -> MailServer:
    demo = idp.demo
    host, _, port = idp.address("smtp").rpartition(":")
    server = MailServer.objects.create(
        name="Contoso",
        auth_method="outlook",
        username=demo["user"],
        client_id=demo["client_id"],
        client_secret=demo["client_secret"],
        smtp_host=host,
        smtp_port=int(port),
        smtp_security="starttls",
        limit_per_minute=1000,
    )
    connect(idp, server)
    return server


def run_until_idle(deliverer: Deliverer) -> None:
    stop = threading.Event()
    for _ in range(20):
        if not deliverer.step(stop):
            return
    raise AssertionError("the worker kept finding work")


def test_it_sends_over_xoauth2_with_one_token_for_the_batch(idp, outlook):
    demo = idp.demo
    idp.control.reset_counters()
    messages = [
        enqueue(from_address=demo["user"], to=[f"r{i}@example.org"], text="hi") for i in range(3)
    ]
    deliverer = Deliverer()
    run_until_idle(deliverer)
    deliverer.close_all()
    assert {m.status for m in OutgoingMessage.objects.all()} == {Status.SENT}
    stored = {m["id"] for m in idp.control.messages()}
    assert {OutgoingMessage.objects.get(pk=m.pk).queue_id for m in messages} <= stored
    assert idp.control.token_requests() == 0  # the access token from the sign-in is still fresh


def test_a_revoked_grant_holds_the_queue_and_reconnecting_resumes_it(
    idp, outlook, django_capture_on_commit_callbacks
):
    demo = idp.demo
    idp.control.revoke_grants(demo["user"])
    Grant.objects.filter(server=outlook).update(
        access_expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    )
    messages = [
        enqueue(from_address=demo["user"], to=[f"r{i}@example.org"], text="hi") for i in range(2)
    ]
    deliverer = Deliverer()
    run_until_idle(deliverer)
    outlook.refresh_from_db()
    assert outlook.held_at is not None
    assert {m.status for m in OutgoingMessage.objects.all()} == {Status.HELD}
    attempt = DeliveryAttempt.objects.filter(message=messages[0]).get()
    assert attempt.outcome == "held" and attempt.step == "token"
    later = enqueue(from_address=demo["user"], to=["late@example.org"], text="hi")
    assert later.status == Status.HELD
    with django_capture_on_commit_callbacks(execute=True):
        connect(idp, outlook)  # the administrator reconnects: store_grant releases the queue
    run_until_idle(deliverer)
    deliverer.close_all()
    assert {m.status for m in OutgoingMessage.objects.all()} == {Status.SENT}
    outlook.refresh_from_db()
    assert outlook.held_at is None


def test_a_from_without_send_as_is_refused_at_the_door(idp, outlook):
    from mailgate.outbox.compose import InvalidMessage

    with pytest.raises(InvalidMessage, match="SendAsDenied"):
        enqueue(
            from_address="someone.else@" + idp.demo["user"].split("@")[1],
            to=["a@example.org"],
            text="x",
        )
    assert os.environ["SSL_CERT_FILE"] == str(idp.ca_file)
