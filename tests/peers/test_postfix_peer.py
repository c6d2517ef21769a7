"""The Postfix + Dovecot test peer itself: SASL answers to smtplib, long tokens, bounded start, clean stop."""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.peers.postfix import PostfixDovecotPeer, _group_members, wait_until

pytestmark = pytest.mark.nodb

USER = "alice@example.org"
GOOD = "good-" + "t" * 40
# Entra ID access tokens are often 1.5-3 KB; Postfix cuts AUTH lines at line_length_limit (docs/test-peers.md, note 9).
LONG = "long-" + "L" * 3600
PASSWORD_USER = "bob@example.org"
PASSWORD = "bob's password"


class Introspection:
    """A stdlib RFC 7662 endpoint on a free loopback port: GOOD and LONG are live tokens of USER."""

    def __init__(self) -> None:
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                token = parse_qs(self.rfile.read(length).decode()).get("token", [""])[0]
                outer.calls += 1
                # Bad tokens get 200 {"active": false}: anything else is an internal failure
                # for Dovecot (a temporary error for the client), not bad credentials.
                answer: dict[str, Any] = (
                    {"active": True, "username": USER}
                    if token in (GOOD, LONG)
                    else {"active": False}
                )
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/introspect"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def introspection() -> Iterator[Introspection]:
    server = Introspection()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def peer(introspection: Introspection) -> Iterator[PostfixDovecotPeer]:
    with PostfixDovecotPeer(
        introspection_url=introspection.url, password_users={PASSWORD_USER: PASSWORD}
    ) as running:
        yield running


def submission(peer: PostfixDovecotPeer) -> smtplib.SMTP:
    connection = smtplib.SMTP(peer.host, peer.submission_port, timeout=10)
    connection.starttls(context=ssl.create_default_context(cafile=str(peer.ca_file)))
    connection.ehlo()
    return connection


class Answers:
    """smtplib's SASL callback: the initial response, then an empty reply to an error challenge."""

    def __init__(self, response: str) -> None:
        self.response = response
        self.sent = False
        self.challenges: list[bytes] = []

    def __call__(self, challenge: bytes | None = None) -> str:
        if not self.sent:
            # None: smtplib asks for the initial response; b"": the server's empty "334 ".
            self.sent = True
            return self.response
        assert challenge is not None
        self.challenges.append(challenge)
        return ""


def xoauth2(user: str, token: str) -> str:
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def test_auth_is_offered_only_after_starttls(peer: PostfixDovecotPeer) -> None:
    with smtplib.SMTP(peer.host, peer.submission_port, timeout=10) as connection:
        connection.ehlo()
        assert not connection.has_extn("auth")
        assert connection.has_extn("starttls")
    with submission(peer) as connection:
        assert connection.esmtp_features["auth"].split() == [
            "PLAIN",
            "LOGIN",
            "XOAUTH2",
            "OAUTHBEARER",
        ]


@pytest.mark.parametrize("initial_response", [True, False], ids=["inline", "continuation"])
def test_a_3_6_kb_token_authenticates_with_or_without_an_initial_response(
    peer: PostfixDovecotPeer, introspection: Introspection, initial_response: bool
) -> None:
    before = introspection.calls
    with submission(peer) as connection:
        code, text = connection.auth(
            "XOAUTH2", Answers(xoauth2(USER, LONG)), initial_response_ok=initial_response
        )
    assert (code, text) == (235, b"2.7.0 Authentication successful")
    assert introspection.calls == before + 1


def test_oauthbearer_authenticates_too(peer: PostfixDovecotPeer) -> None:
    response = f"n,a={USER},\x01auth=Bearer {GOOD}\x01\x01"
    with submission(peer) as connection:
        code, _ = connection.auth("OAUTHBEARER", Answers(response))
    assert code == 235


def test_a_refused_token_gets_the_error_challenge_then_535(peer: PostfixDovecotPeer) -> None:
    answers = Answers(xoauth2(USER, "not-a-live-token"))
    with submission(peer) as connection, pytest.raises(smtplib.SMTPAuthenticationError) as failed:
        connection.auth("XOAUTH2", answers)
    assert failed.value.smtp_code == 535
    assert failed.value.smtp_error == b"5.7.8 Error: authentication failed: (reason unavailable)"
    assert [json.loads(c) for c in answers.challenges] == [
        {"status": "401", "schemes": "bearer", "scope": "mail"}
    ]


def test_a_live_token_for_another_mailbox_is_refused(peer: PostfixDovecotPeer) -> None:
    with submission(peer) as connection, pytest.raises(smtplib.SMTPAuthenticationError):
        connection.auth("XOAUTH2", Answers(xoauth2("mallory@example.org", GOOD)))
    assert "did not match" in peer.dovecot_log_text()


def test_refusals_do_not_slow_down_the_next_login(peer: PostfixDovecotPeer) -> None:
    """Dovecot's per-IP auth penalty (2 s, 4 s, ... after failures) is off (docs/test-peers.md, note 1)."""
    for _ in range(2):
        with submission(peer) as connection, pytest.raises(smtplib.SMTPAuthenticationError):
            connection.auth("PLAIN", Answers(f"\0{PASSWORD_USER}\0wrong"))
    started = time.monotonic()
    with submission(peer) as connection:
        assert connection.login(PASSWORD_USER, PASSWORD)[0] == 235
    assert time.monotonic() - started < 2


def test_accepted_mail_lands_in_the_maildir_with_delivered_to(peer: PostfixDovecotPeer) -> None:
    raw = b"From: bob@example.org\r\nSubject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\nhi\r\n"
    with submission(peer) as connection:
        connection.login(PASSWORD_USER, PASSWORD)
        assert (
            connection.sendmail(PASSWORD_USER, ["Carol@Example.org", "dan@example.org"], raw) == {}
        )
    for rcpt in ("carol@example.org", "dan@example.org"):
        [message] = peer.wait_for_messages(rcpt, 1)
        assert message["Message-ID"] == "<m1@example.org>"
        assert message["Return-Path"] == "<bob@example.org>"
    # Postfix writes its log line after the Maildir file, so it may lag behind under load.
    sent = r"to=<dan@example\.org>, relay=virtual, .*status=sent"
    assert wait_until(lambda: bool(peer.postfix_log_lines(sent)), 10), sent


def test_the_submissions_port_speaks_implicit_tls(peer: PostfixDovecotPeer) -> None:
    context = ssl.create_default_context(cafile=str(peer.ca_file))
    with smtplib.SMTP_SSL(peer.host, peer.submissions_port, context=context, timeout=10) as s:
        s.ehlo()
        code, _ = s.auth("XOAUTH2", Answers(xoauth2(USER, GOOD)))
    assert code == 235


def test_it_starts_within_seconds_and_stop_ends_every_process_it_started(
    introspection: Introspection,
) -> None:
    peer = PostfixDovecotPeer(introspection_url=introspection.url)
    started = time.monotonic()
    peer.start()
    groups = peer.process_groups()
    ports = (peer.submission_port, peer.submissions_port)
    run_dir = peer.run_dir
    try:
        assert time.monotonic() - started < 10
        assert len(groups) == 2
        commands = set()
        for pid in peer.processes():
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                commands.add(fh.read().split(b"\0")[0].decode())
        assert "/usr/lib/postfix/sbin/master" in commands
        assert any(c.endswith("/auth") for c in commands)  # Dovecot's auth process
        peer.stop_postfix()
        peer.start_postfix()  # the same ports again
        assert all(_connects(port) for port in ports)
    finally:
        peer.stop()
    assert [_group_members(group) for group in groups] == [[], []]
    assert not any(_connects(port) for port in ports)
    assert run_dir is not None and not run_dir.exists()
    peer.stop()  # a second stop is harmless


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
