"""The outbox against an independent real SMTP server: Postfix submission with Dovecot SASL (tests/peers).

Bearer tokens come from the sandbox's identity server through the real sign-in and token flow, and
Dovecot asks that server's introspection endpoint (`/sandbox/introspect/smtp`) about each one, so
the path under test is mailgate's own: enqueue, `mailgate worker --once`, get_fresh_access_token,
STARTTLS with the certificate trusted through SSL_CERT_FILE, AUTH XOAUTH2, delivery into a Maildir.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import smtplib
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.core.management import call_command

from mailgate.diagnostics.connection import run_connection_test
from mailgate.oauth.models import Grant
from mailgate.oauth.tokens import store_grant
from mailgate.outbox import enqueue
from mailgate.outbox.models import DeliveryAttempt, OutgoingMessage, Status
from mailgate.outbox.worker import get_deliverer
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer
from tests.peers.postfix import PostfixDovecotPeer, trust_bundle, wait_until
from tests.sandbox_fixtures import SMTP_SCOPE, demo_tokens

PASSWORD_USER = "relay@example.net"
PASSWORD = "Tr0ub4dor&3-for-the-peer"


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory, sandbox_template: Path) -> Iterator[Sandbox]:
    """The sandbox's identity server only: the SMTP server under test is Postfix."""
    state_dir = tmp_path_factory.mktemp("peer-identity")
    shutil.copytree(sandbox_template, state_dir, dirs_exist_ok=True)
    with Sandbox(state_dir, smtp=False, dovecot=False) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def peer(identity: Sandbox) -> Iterator[PostfixDovecotPeer]:
    with PostfixDovecotPeer(
        introspection_url=f"{identity.http_url}/sandbox/introspect/smtp",
        password_users={PASSWORD_USER: PASSWORD},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def trust_file(
    identity: Sandbox, peer: PostfixDovecotPeer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """SSL_CERT_FILE for the module: the sandbox's CA (token endpoint) and the peer's (Postfix)."""
    return trust_bundle(
        tmp_path_factory.mktemp("peer-trust") / "ca-bundle.pem", identity.ca_file, peer.ca_file
    )


@pytest.fixture
def env(
    identity: Sandbox,
    peer: PostfixDovecotPeer,
    trust_file: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    transactional_db: None,
) -> Iterator[PostfixDovecotPeer]:
    """Point mailgate at the sandbox's identity server and trust both CAs; yield the peer.

    transactional_db: the worker command closes connections found in a transaction between
    steps (close_old_connections), which would end pytest-django's per-test transaction.
    """
    for key, value in identity.env().items():
        if key.startswith("MAILGATE_") and not key.startswith("MAILGATE_SANDBOX_"):
            setattr(settings, key, value)
    monkeypatch.setenv("SSL_CERT_FILE", str(trust_file))
    monkeypatch.setattr("mailgate.oauth.tokens.RETRY_PAUSES", (0.05,))
    identity.control.clear_faults()
    identity.control.reset_counters()
    if not peer.postfix_running:
        peer.start_postfix()
    yield peer
    # `mailgate worker --once` keeps its connections in a per-process Deliverer between runs.
    get_deliverer().close_all()


def connect(sandbox: Sandbox, server: MailServer) -> None:
    """Sign in as the demo user through the sandbox's pages and store the grant, as the callback does."""
    tokens = demo_tokens(sandbox.login_url, sandbox.ca_file, sandbox.demo, state="postfix-peer")
    store_grant(server, tokens=tokens, account=sandbox.demo["user"], scopes=SMTP_SCOPE.split())


@pytest.fixture
def outlook(env: PostfixDovecotPeer, identity: Sandbox) -> MailServer:
    """An Outlook OAuth server whose SMTP Server is the Postfix peer's submission port."""
    demo = identity.demo
    server = MailServer.objects.create(
        name="Contoso via Postfix",
        auth_method="outlook",
        username=demo["user"],
        client_id=demo["client_id"],
        client_secret=demo["client_secret"],
        smtp_host=env.host,
        smtp_port=env.submission_port,
        smtp_security="starttls",
        limit_per_minute=1000,
    )
    connect(identity, server)
    return server


def address(name: str) -> str:
    """A recipient no other test of the module uses (the peer and its Maildir live per module)."""
    return f"{name}-{uuid.uuid4().hex[:8]}@example.org"


def run_worker_once() -> None:
    call_command("worker", "--once")


def statuses() -> set[str]:
    return set(OutgoingMessage.objects.values_list("status", flat=True))


def test_an_outlook_server_sends_over_xoauth2_and_the_message_id_arrives_intact(
    outlook: MailServer, identity: Sandbox, env: PostfixDovecotPeer
) -> None:
    sender = identity.demo["user"]
    readers, copy = [address("reader"), address("reader")], address("copy")
    messages = [
        enqueue(
            from_address=sender,
            to=[readers[i]],
            cc=[copy] if i == 0 else None,
            subject=f"Invoice {i}",
            text=f"Invoice number {i}.\n",
        )
        for i in range(2)
    ]
    run_worker_once()
    assert statuses() == {Status.SENT}
    for i, queued in enumerate(messages):
        message = OutgoingMessage.objects.get(pk=queued.pk)
        # Postfix answers "250 2.0.0 Ok: queued as <id>" to DATA and "250 2.0.0 Ok: <n> bytes
        # queued as <id>" to BDAT LAST; the id is the one its log delivers.
        assert message.queue_id
        assert re.fullmatch(
            rf"250 2\.0\.0 Ok: (\d+ bytes )?queued as {message.queue_id}", message.last_reply
        )
        delivered = env.wait_for_messages(readers[i], 1)
        assert [m["Message-ID"] for m in delivered] == [message.message_id]
        assert delivered[0]["Subject"] == f"Invoice {i}"
        assert delivered[0].get_content() == f"Invoice number {i}.\n"
        assert env.wait_for_log_lines(
            rf"{message.queue_id}: to=<{re.escape(readers[i])}>, .*status=sent"
        )
    copies = env.wait_for_messages(copy, 1)
    assert copies[0]["Message-ID"] == messages[0].message_id
    assert env.wait_for_log_lines(rf"sasl_method=XOAUTH2, sasl_username={sender}")
    assert identity.control.counters().get("introspect_smtp", 0) >= 1
    # The token from the sign-in was still fresh: no refresh was needed for the batch.
    assert identity.control.token_requests("refresh_token") == 0


def test_postfix_gets_pipelined_bdat_and_the_content_byte_for_byte(
    outlook: MailServer, identity: Sandbox, env: PostfixDovecotPeer, settings: Any
) -> None:
    """Postfix offers PIPELINING and CHUNKING: the outbox sends BDAT; lines starting with a dot
    (which DATA would have to stuff) arrive unchanged."""
    # One connection, so that Postfix's counts of its commands cover the three messages.
    settings.MAILGATE_OUTBOX_WORKER_CONNECTIONS = 1
    sender = identity.demo["user"]
    reader = address("bdat")
    text = ".a line starting with a dot\n..and one with two\n.\nend\n"
    queued = [
        enqueue(from_address=sender, to=[reader], subject=f"Dots {i}", text=text) for i in range(3)
    ]
    run_worker_once()
    assert statuses() == {Status.SENT}
    get_deliverer().close_all()  # Postfix logs each command's count when the client disconnects
    delivered = env.wait_for_messages(reader, 3)
    assert sorted(m["Message-ID"] for m in delivered) == sorted(m.message_id for m in queued)
    assert {m.get_content() for m in delivered} == {text}
    # Postfix counts commands as accepted/received: the question "BDAT 0 LAST" outside a
    # transaction was refused (503), then a chunk and "BDAT 0 LAST" for each message; no DATA.
    counts = r"disconnect from .* mail=3 rcpt=3 bdat=6/7 quit=1"
    # Postfix's log is written by another process (postlogd): wait for the line.
    assert wait_until(lambda: bool(env.postfix_log_lines(counts)), 10), counts
    assert "data=" not in env.postfix_log_lines(counts)[0]


def _signed_token(identity: Sandbox, scope: str) -> str:
    assert identity.state is not None
    now = int(identity.state.now())
    claims = {
        "aud": "https://outlook.office.com",
        "scp": scope,
        "upn": identity.demo["user"],
        "exp": now + 3600,
        "iat": now,
        "appid": identity.demo["client_id"],
    }
    return identity.state.signing_key.sign(claims)


@pytest.mark.parametrize("token_kind", ["unknown-to-the-issuer", "lacks-SMTP.Send"])
def test_a_refused_cached_token_is_refreshed_once_and_the_mail_goes_out(
    outlook: MailServer,
    identity: Sandbox,
    env: PostfixDovecotPeer,
    token_kind: str,
) -> None:
    # The access token may be revoked while the grant lives: a 535 on the cached token gets one
    # newly issued token before anything is held (a dead grant is then Reconnect required).
    bad = (
        "eyJ0eXAiOiJKV1QifQ." + "x" * 1200 + ".sig"
        if token_kind == "unknown-to-the-issuer"
        else _signed_token(identity, "IMAP.AccessAsUser.All")
    )
    grant = Grant.objects.get(server=outlook)
    grant.access_token = bad
    grant.save()
    sender = identity.demo["user"]
    recipients = [address("renewed"), address("renewed")]
    messages = [enqueue(from_address=sender, to=[rcpt], text="x") for rcpt in recipients]
    dovecot_log_before = len(env.dovecot_log_text())
    identity.control.reset_counters()
    run_worker_once()

    assert identity.control.token_requests("refresh_token") == 1
    assert statuses() == {Status.SENT}
    outlook.refresh_from_db()
    assert outlook.held_at is None
    assert not DeliveryAttempt.objects.exclude(outcome="sent").exists()
    assert env.wait_for_log_lines(rf"SASL XOAUTH2 authentication failed.*sasl_username={sender}")
    # Dovecot's own reason for the refusal of the cached token (Postfix says "reason unavailable").
    assert "oauth2 failed: Introspection failed" in env.wait_for_dovecot_log(
        "oauth2 failed", start=dovecot_log_before
    )
    for rcpt, queued in zip(recipients, messages, strict=True):
        delivered = env.wait_for_messages(rcpt, 1)
        assert delivered[0]["Message-ID"] == queued.message_id
    assert bad not in OutgoingMessage.objects.get(pk=messages[0].pk).last_error


@pytest.mark.parametrize(
    ("security", "port_name"), [("starttls", "submission_port"), ("ssl", "submissions_port")]
)
def test_a_password_server_sends_with_plain_through_the_same_postfix(
    env: PostfixDovecotPeer, security: str, port_name: str
) -> None:
    server = MailServer.objects.create(
        name=f"Relay ({security})",
        auth_method="password",
        username=PASSWORD_USER,
        password=PASSWORD,
        smtp_host=env.host,
        smtp_port=getattr(env, port_name),
        smtp_security=security,
        limit_per_minute=1000,
    )
    rcpt = address(f"plain-{security}")
    queued = enqueue(from_address=PASSWORD_USER, to=[rcpt], text="by password")
    run_worker_once()
    message = OutgoingMessage.objects.get(pk=queued.pk)
    assert message.status == Status.SENT, message.last_error
    assert message.server_id == server.pk
    delivered = env.wait_for_messages(rcpt, 1)
    assert delivered[0]["Message-ID"] == queued.message_id
    assert env.wait_for_log_lines(
        rf"{message.queue_id}: client=.*sasl_method=PLAIN, sasl_username={PASSWORD_USER}"
    )


def test_a_wrong_password_holds_the_queue_until_a_connection_test_passes(
    env: PostfixDovecotPeer,
) -> None:
    server = MailServer.objects.create(
        name="Relay with an old password",
        auth_method="password",
        username=PASSWORD_USER,
        password="an-old-password",
        smtp_host=env.host,
        smtp_port=env.submission_port,
        smtp_security="starttls",
    )
    rcpt = address("after-the-fix")
    queued = enqueue(from_address=PASSWORD_USER, to=[rcpt], text="x")
    run_worker_once()
    message = OutgoingMessage.objects.get(pk=queued.pk)
    assert message.status == Status.HELD
    assert message.last_reply.startswith("535 5.7.8")
    server.refresh_from_db()
    assert server.held_at is not None
    assert "an-old-password" not in message.last_error + message.diagnosis + server.hold_reason

    # The administrator saves the right password; a passing connection test releases the queue.
    server.password = PASSWORD
    server.save()
    result = run_connection_test(server)
    assert result.ok, result.summary()
    run_worker_once()
    assert OutgoingMessage.objects.get(pk=queued.pk).status == Status.SENT
    assert env.wait_for_messages(rcpt, 1)[0]["Message-ID"] == queued.message_id


def test_mail_waits_while_postfix_is_down_and_goes_once_it_is_back(
    outlook: MailServer, identity: Sandbox, env: PostfixDovecotPeer
) -> None:
    sender = identity.demo["user"]
    env.stop_postfix()
    try:
        recipients = [address("later"), address("later")]
        messages = [enqueue(from_address=sender, to=[rcpt], text="x") for rcpt in recipients]
        run_worker_once()
        assert statuses() == {Status.DEFERRED}
        first = OutgoingMessage.objects.get(pk=messages[0].pk)
        assert first.attempts == 1 and first.retries == 1
        assert "cannot connect" in first.last_error
        attempt = DeliveryAttempt.objects.get(message=first)
        assert (attempt.outcome, attempt.step) == ("deferred", "connect")
        retry_at = max(m.next_attempt_at for m in OutgoingMessage.objects.all())
        assert retry_at > first.updated_at

        run_worker_once()  # not due yet: nothing is tried while the back-off runs
        assert DeliveryAttempt.objects.count() == 2
    finally:
        env.start_postfix()

    # Jump past the back-off (about a minute); the sign-in's access token stays fresh.
    with time_machine.travel(retry_at + dt.timedelta(seconds=1), tick=True):
        run_worker_once()
    assert statuses() == {Status.SENT}
    for rcpt, queued in zip(recipients, messages, strict=True):
        message = OutgoingMessage.objects.get(pk=queued.pk)
        assert message.attempts == 2
        delivered = env.wait_for_messages(rcpt, 1)
        assert delivered[0]["Message-ID"] == queued.message_id


def test_without_the_peers_ca_in_ssl_cert_file_the_mail_waits_and_nothing_is_sent(
    outlook: MailServer, identity: Sandbox, env: PostfixDovecotPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(identity.ca_file))  # trusts the token endpoint only
    rcpt = address("untrusted")
    queued = enqueue(from_address=identity.demo["user"], to=[rcpt], text="x")
    run_worker_once()
    message = OutgoingMessage.objects.get(pk=queued.pk)
    assert message.status == Status.DEFERRED
    assert "TLS certificate of 127.0.0.1" in message.last_error
    assert "is not trusted" in message.last_error
    assert "SSL_CERT_FILE" in message.diagnosis
    assert DeliveryAttempt.objects.get(message=message).step == "tls"
    assert identity.control.counters().get("introspect_smtp", 0) == 0  # no token was sent
    assert not env.messages(rcpt)


def _raw_smtplib_loop(env: PostfixDovecotPeer, messages: list[tuple[str, bytes]]) -> float:
    """Seconds a plain smtplib client takes for `messages` over one authenticated connection."""
    started = time.perf_counter()
    with smtplib.SMTP(env.host, env.submission_port, timeout=30) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=str(env.ca_file)))
        smtp.ehlo()
        smtp.login(PASSWORD_USER, PASSWORD)
        for rcpt, data in messages:
            smtp.sendmail(PASSWORD_USER, [rcpt], data)
    return time.perf_counter() - started


# The stall this guards against (a reply held back until the client's delayed acknowledgement,
# see SMTPTransport._ack_promptly) made the worker 17 times slower than the raw loop (46 ms per
# message); without it the worker, database writes included, takes 0.6-1.3 times as long.
MAX_RATIO_TO_RAW = 5.0


def test_with_chunking_a_message_costs_about_what_a_raw_smtplib_loop_pays(
    env: PostfixDovecotPeer, settings: Any
) -> None:
    """200 messages of 10 KB: the worker (PIPELINING + BDAT, as by default) against smtplib's
    step-by-step DATA, on the same Postfix, both over one connection with STARTTLS and AUTH."""
    settings.MAILGATE_OUTBOX_WORKER_CONNECTIONS = 1  # the per-message cost of one connection
    MailServer.objects.create(
        name="Relay for speed",
        auth_method="password",
        username=PASSWORD_USER,
        password=PASSWORD,
        smtp_host=env.host,
        smtp_port=env.submission_port,
        smtp_security="starttls",
        limit_per_minute=10_000,
    )
    body = ("0123456789abcdef" * 4 + "\n") * 160  # 10 KB: larger than Postfix's 4 KB input buffer
    count = 200
    queued = [
        enqueue(from_address=PASSWORD_USER, to=[address("speed")], subject=f"s{i}", text=body)
        for i in range(count)
    ]
    raw_messages = [(address("raw"), message.raw_bytes) for message in queued]
    raw_before = _raw_smtplib_loop(env, raw_messages)

    started = time.perf_counter()
    for _ in range(5):  # one pass normally sends them all (a batch is 200 messages)
        run_worker_once()
        if OutgoingMessage.objects.exclude(status=Status.SENT).count() == 0:
            break
    mailgate = time.perf_counter() - started
    raw = (raw_before + _raw_smtplib_loop(env, raw_messages)) / 2

    assert statuses() == {Status.SENT}
    ratio = mailgate / raw
    assert ratio <= MAX_RATIO_TO_RAW, (
        f"the worker took {mailgate / count * 1000:.1f} ms per message, the raw smtplib loop "
        f"{raw / count * 1000:.1f} ms ({ratio:.1f}x; at most {MAX_RATIO_TO_RAW}x expected)"
    )
    get_deliverer().close_all()  # Postfix logs each command's count when the client disconnects
    # The content went as BDAT (Postfix's log is written by another process: wait for the line).
    bdat = rf"disconnect from .* mail={count} rcpt={count} bdat="
    assert wait_until(lambda: bool(env.postfix_log_lines(bdat)), 10), bdat
