"""The sandbox's real Dovecot: stdlib imaplib and poplib authenticate with XOAUTH2 / OAUTHBEARER over implicit TLS."""

from __future__ import annotations

import base64
import errno
import imaplib
import os
import poplib
import pwd
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailgate.sandbox import dovecot as dovecot_module
from mailgate.sandbox.ca import SandboxCA
from mailgate.sandbox.dovecot import INSTALL_HINT, DovecotError, DovecotServer, mailbox_dir
from mailgate.sandbox.mailstore import FileMailStore
from mailgate.sandbox.smtp import ExchangeSMTPServer
from tests.sandbox.mail_fixtures import (
    IntrospectionServer,
    Sasl,
    SmallPolicy,
    make_policy,
    oauthbearer,
    xoauth2,
)

pytestmark = pytest.mark.nodb

ALEX = "alex@contoso.example"
SAM = "sam@contoso.example"
GINA = "gina@gmail.example"
IMAP = "IMAP.AccessAsUser.All"
POP = "POP.AccessAsUser.All"


@dataclass
class Peer:
    state: Path
    ca: SandboxCA
    policy: SmallPolicy
    introspection: IntrospectionServer
    dovecot: DovecotServer

    def imap(self) -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL(
            "127.0.0.1", self.dovecot.imap_port, ssl_context=self.ca.client_context(), timeout=10
        )

    def pop3(self) -> poplib.POP3_SSL:
        return poplib.POP3_SSL(
            "127.0.0.1", self.dovecot.pop3_port, context=self.ca.client_context(), timeout=10
        )

    def imap_login(self, user: str, token: str, mechanism: str = "XOAUTH2") -> imaplib.IMAP4_SSL:
        client = self.imap()
        build = xoauth2 if mechanism == "XOAUTH2" else oauthbearer
        typ, _ = client.authenticate(mechanism, Sasl(build(user, token), mechanism, as_bytes=True))
        assert typ == "OK"
        return client


def state_dir() -> Path:
    # Not pytest's tmp_path: as root, Dovecot's mail processes run as "nobody" and must traverse
    # every parent, and /tmp/pytest-of-root is 0700.
    return Path(tempfile.mkdtemp(prefix="mailgate-dovecot-test-"))


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    if not dovecot_module.dovecot_available():
        pytest.fail(INSTALL_HINT)
    state = state_dir()
    ca = SandboxCA(state)
    policy = make_policy(state, ALEX, SAM, GINA)
    introspection = IntrospectionServer(policy).start()
    server = DovecotServer(
        state,
        cert_file=ca.cert_file,
        key_file=ca.key_file,
        introspection_url_base=introspection.base,
    )
    server.start()
    try:
        yield Peer(state, ca, policy, introspection, server)
    finally:
        server.stop()
        introspection.stop()
        shutil.rmtree(state, ignore_errors=True)


def imap_failure(peer: Peer, user: str, token: str, mechanism: str = "XOAUTH2") -> tuple[str, Sasl]:
    client = peer.imap()
    build = xoauth2 if mechanism == "XOAUTH2" else oauthbearer
    sasl = Sasl(build(user, token), mechanism, as_bytes=True)
    with pytest.raises(imaplib.IMAP4.error) as info:
        client.authenticate(mechanism, sasl)
    client.shutdown()
    return str(info.value), sasl


def pop3_auth(peer: Peer, user: str, token: str, mechanism: str = "XOAUTH2") -> bytes:
    """The documented two-line POP exchange: `AUTH XOAUTH2`, `+`, the base64 string (Microsoft's IMAP/POP/SMTP OAuth guide)."""
    client = peer.pop3()
    build = xoauth2 if mechanism == "XOAUTH2" else oauthbearer
    try:
        assert client._shortcmd(f"AUTH {mechanism}").startswith(b"+")
        try:
            reply: bytes = client._shortcmd(base64.b64encode(build(user, token).encode()).decode())
        except poplib.error_proto as exc:
            return exc.args[0]
        if reply.startswith(b"+ "):
            # An error challenge: answer it (empty for XOAUTH2, ^A for OAUTHBEARER) to get the verdict.
            answer = "" if mechanism == "XOAUTH2" else base64.b64encode(b"\x01").decode()
            try:
                client._shortcmd(answer)
            except poplib.error_proto as exc:
                return exc.args[0]
        client.quit()
        return reply
    finally:
        client.close()


# -- IMAP --------------------------------------------------------------------------------


def test_imap_greets_with_exchanges_banner_and_offers_only_oauth(peer: Peer) -> None:
    client = peer.imap()
    assert client.welcome.decode().endswith("The Microsoft Exchange IMAP4 service is ready.")
    assert {"AUTH=XOAUTH2", "AUTH=OAUTHBEARER", "SASL-IR"} <= set(client.capabilities)
    assert "AUTH=PLAIN" not in client.capabilities
    client.logout()


def test_imap_xoauth2_with_a_valid_token_opens_the_inbox(peer: Peer) -> None:
    peer.dovecot.deliver(ALEX, b"Subject: Welcome\r\nFrom: it@contoso.example\r\n\r\nHello.\r\n")
    client = peer.imap_login(ALEX, peer.policy.mint(ALEX, IMAP))
    typ, data = client.select("INBOX")
    assert typ == "OK" and int(data[0]) >= 1
    typ, found = client.search(None, "SUBJECT", "Welcome")
    assert found[0].split()
    client.logout()


def test_imap_oauthbearer_with_a_valid_token_succeeds(peer: Peer) -> None:
    peer.imap_login(ALEX, peer.policy.mint(ALEX, IMAP), "OAUTHBEARER").logout()


def test_imap_accepts_a_long_token(peer: Peer) -> None:
    token = peer.policy.mint(ALEX, IMAP + " " + " ".join(f"Extra.Scope{i}" for i in range(250)))
    assert len(token) > 4000
    peer.imap_login(ALEX, token).logout()


def test_imap_accepts_a_google_token_for_its_own_address(peer: Peer) -> None:
    peer.imap_login(GINA, peer.policy.mint_google(GINA)).logout()


def test_imap_refuses_a_token_signed_by_another_key(peer: Peer) -> None:
    stranger = make_policy(peer.state / "other", ALEX)
    token = stranger.mint(ALEX, IMAP)
    error, sasl = imap_failure(peer, ALEX, token)
    assert "[AUTHENTICATIONFAILED] Authentication failed." in error
    assert "oauth2 failed" in peer.dovecot.log_path.read_text()
    assert token not in peer.dovecot.log_path.read_text()
    # Dovecot sends a Gmail-style error challenge first (Exchange answers NO directly).
    assert b'"status":"401"' in sasl.challenges[0]


def test_imap_refuses_an_expired_token(peer: Peer) -> None:
    token = peer.policy.mint(ALEX, IMAP, lifetime=-10)
    assert "AUTHENTICATIONFAILED" in imap_failure(peer, ALEX, token)[0]


def test_imap_refuses_a_pop_only_token(peer: Peer) -> None:
    assert "AUTHENTICATIONFAILED" in imap_failure(peer, ALEX, peer.policy.mint(ALEX, POP))[0]


def test_imap_refuses_an_smtp_only_token(peer: Peer) -> None:
    token = peer.policy.mint(ALEX, "SMTP.Send")
    assert "AUTHENTICATIONFAILED" in imap_failure(peer, ALEX, token, "OAUTHBEARER")[0]


def test_imap_refuses_a_token_of_another_user(peer: Peer) -> None:
    assert "AUTHENTICATIONFAILED" in imap_failure(peer, SAM, peer.policy.mint(ALEX, IMAP))[0]


def test_repeated_failures_do_not_slow_the_next_login(peer: Peer) -> None:
    for _ in range(5):
        imap_failure(peer, ALEX, "not-a-token")
    # anvil's auth penalty would delay this by seconds and trip the 10 s client timeout.
    peer.imap_login(ALEX, peer.policy.mint(ALEX, IMAP)).logout()


def test_every_login_asks_the_introspection_endpoint_for_its_protocol(peer: Peer) -> None:
    before = len(peer.introspection.calls)
    peer.imap_login(ALEX, peer.policy.mint(ALEX, IMAP)).logout()
    assert pop3_auth(peer, ALEX, peer.policy.mint(ALEX, POP)).startswith(b"+OK")
    assert peer.introspection.calls[before:] == ["imap", "pop3"]


# -- POP3 --------------------------------------------------------------------------------


def test_pop3_greets_with_exchanges_banner(peer: Peer) -> None:
    client = peer.pop3()
    assert client.getwelcome() == b"+OK The Microsoft Exchange POP3 service is ready."
    client.quit()


def test_pop3_xoauth2_with_a_valid_token_succeeds_and_lists_mail(peer: Peer) -> None:
    peer.dovecot.deliver(SAM, b"Subject: For POP\r\n\r\nHello.\r\n")
    client = peer.pop3()
    client._shortcmd("AUTH XOAUTH2")
    reply = client._shortcmd(
        base64.b64encode(xoauth2(SAM, peer.policy.mint(SAM, POP)).encode()).decode()
    )
    assert reply.startswith(b"+OK")
    count, _ = client.stat()
    assert count >= 1
    client.quit()


def test_pop3_oauthbearer_with_a_valid_token_succeeds(peer: Peer) -> None:
    assert pop3_auth(peer, ALEX, peer.policy.mint(ALEX, POP), "OAUTHBEARER").startswith(b"+OK")


def test_pop3_refuses_an_imap_only_token(peer: Peer) -> None:
    reply = pop3_auth(peer, ALEX, peer.policy.mint(ALEX, IMAP))
    assert reply.startswith(b"-ERR") and b"Authentication failed" in reply


def test_pop3_refuses_a_bad_and_an_expired_token(peer: Peer) -> None:
    assert pop3_auth(peer, ALEX, "not-a-token").startswith(b"-ERR")
    expired = peer.policy.mint(ALEX, POP, lifetime=-10)
    assert pop3_auth(peer, ALEX, expired, "OAUTHBEARER").startswith(b"-ERR")


# -- delivery ----------------------------------------------------------------------------


def test_mail_submitted_over_smtp_reaches_the_imap_inbox(peer: Peer) -> None:
    store = FileMailStore(peer.state, clock=peer.policy.now)
    smtp_server = ExchangeSMTPServer(
        "127.0.0.1", 0, peer.ca.server_context(), peer.policy, store, peer.dovecot
    )
    with smtp_server:
        client = smtplib.SMTP("127.0.0.1", smtp_server.port, timeout=10)
        client.starttls(context=peer.ca.client_context())
        client.ehlo()
        client.auth("XOAUTH2", Sasl(xoauth2(ALEX, peer.policy.mint(ALEX, "SMTP.Send"))))
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = ALEX, SAM, "Through SMTP"
        msg["Message-ID"] = "<through-smtp@contoso.example>"
        msg.set_content("Delivered by the sandbox.\n")
        client.send_message(msg)
        client.quit()
    imap = peer.imap_login(SAM, peer.policy.mint(SAM, IMAP))
    imap.select("INBOX")
    _, found = imap.search(None, "HEADER", "Message-ID", "<through-smtp@contoso.example>")
    [number] = found[0].split()
    _, fetched = imap.fetch(number, "(BODY.PEEK[])")
    raw = fetched[0][1]
    assert raw.startswith(b"Return-Path: <alex@contoso.example>\r\nReceived: from ")
    assert b"Delivered by the sandbox." in raw
    imap.logout()


def test_delivered_files_belong_to_the_mail_user(peer: Peer) -> None:
    peer.dovecot.deliver("New.User@Contoso.example", b"Subject: x\r\n\r\ny\r\n")
    maildir = mailbox_dir(peer.dovecot.mail_root, "new.user@contoso.example")
    [delivered] = list((maildir / "new").iterdir())
    assert delivered.stat().st_uid == peer.dovecot.mail_uid
    assert list((maildir / "tmp").iterdir()) == []


def test_deliver_refuses_an_address_that_is_not_a_mailbox(peer: Peer) -> None:
    for bad in ("../../etc", "no-at-sign", "a/b@contoso.example"):
        with pytest.raises(ValueError, match="address"):
            peer.dovecot.deliver(bad, b"x")


# -- configuration and lifecycle ---------------------------------------------------------


def test_the_configuration_lives_in_the_state_dir(peer: Peer) -> None:
    config = peer.dovecot.config_path.read_text()
    assert "/etc/dovecot" not in config
    assert str(peer.state) in config
    assert "ssl = required" in config
    assert "auth_mechanisms = xoauth2 oauthbearer" in config


def test_stop_ends_every_dovecot_process() -> None:
    state = state_dir()
    try:
        ca = SandboxCA(state)
        server = DovecotServer(
            state,
            cert_file=ca.cert_file,
            key_file=ca.key_file,
            introspection_url_base="http://127.0.0.1:9/sandbox/introspect",
        )
        server.start()
        assert server.running
        pgid = server._process.pid if server._process else 0
        assert server._group_alive(pgid)
        imap_port = server.imap_port
        server.stop()
        assert not server._group_alive(pgid)
        assert not dovecot_module._port_open("127.0.0.1", imap_port)
        server.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.parametrize("taken", ["imap", "pop3"])
def test_a_port_someone_listens_on_is_refused_before_dovecot_starts(taken: str) -> None:
    """A taken port accepts connections: it must not pass for Dovecot's listener (a race the
    demo once lost under load, then ran on with no IMAP server)."""
    state = state_dir()
    try:
        ca = SandboxCA(state)
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            server = DovecotServer(
                state,
                imap_port=port if taken == "imap" else 0,
                pop3_port=port if taken == "pop3" else 0,
                cert_file=ca.cert_file,
                key_file=ca.key_file,
                introspection_url_base="http://127.0.0.1:9/sandbox/introspect",
            )
            with pytest.raises(OSError) as info:
                server.start()
        assert info.value.errno == errno.EADDRINUSE
        assert str(port) in str(info.value)
        assert not server.running
        assert not (server.dir / "dovecot-start.log").exists()
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_a_missing_dovecot_is_explained_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Dovecot is installed here; hide it the way a machine without the package would look.
    monkeypatch.setattr(dovecot_module, "dovecot_binary", lambda: None)
    assert not dovecot_module.dovecot_available()
    server = DovecotServer(
        Path(os.devnull).parent,
        cert_file=Path("cert.pem"),
        key_file=Path("key.pem"),
        introspection_url_base="http://127.0.0.1:9",
    )
    with pytest.raises(DovecotError) as info:
        server.start()
    assert "apt-get install dovecot-imapd dovecot-pop3d" in str(info.value)


def test_a_state_dir_behind_a_closed_parent_still_works_as_root() -> None:
    outer = state_dir()
    closed = outer / "closed"
    closed.mkdir(mode=0o700)
    state = closed / "state"
    try:
        ca = SandboxCA(state)
        server = DovecotServer(
            state,
            cert_file=ca.cert_file,
            key_file=ca.key_file,
            introspection_url_base="http://localhost:9/sandbox/introspect",
        )
        server.start()
        root = server.runtime_root
        assert root is not None
        server.deliver(ALEX, b"Subject: kept\r\n\r\nx\r\n")
        assert list((mailbox_dir(server.mail_root, ALEX) / "new").iterdir())
        assert (
            "introspection_url = http://127.0.0.1:9/sandbox/introspect/imap"
            in (server.dir / "oauth2-imap.conf.ext").read_text()
        )
        server.stop()
        if os.geteuid() == 0:
            # "nobody" cannot enter `closed`: mail lived in a private temporary dir, gone at stop.
            assert not str(root).startswith(str(state))
            assert not root.exists()
        else:
            assert root == state.resolve()
    finally:
        shutil.rmtree(outer, ignore_errors=True)


ROOTLESS_CHECK = """
import imaplib, pathlib, ssl, sys
sys.path.insert(0, ".")
from sandbox_dovecot import DovecotServer, mailbox_dir

state = pathlib.Path("state").resolve()
server = DovecotServer(
    state,
    cert_file=state / "tls" / "server.pem",
    key_file=state / "tls" / "server-key.pem",
    introspection_url_base="http://127.0.0.1:9/sandbox/introspect",
)
server.start()
try:
    context = ssl.create_default_context(cafile=str(state / "tls" / "ca.pem"))
    client = imaplib.IMAP4_SSL("127.0.0.1", server.imap_port, ssl_context=context, timeout=10)
    print(client.welcome.decode())
    client.logout()
    server.deliver("alex@contoso.example", b"Subject: x\\r\\n\\r\\ny\\r\\n")
    print(len(list((mailbox_dir(server.mail_root, "alex@contoso.example") / "new").iterdir())))
finally:
    server.stop()
"""


def test_dovecot_runs_as_an_ordinary_user() -> None:
    # As root, run the check as "nobody" with Debian's Python; dovecot.py needs only the stdlib.
    work = state_dir()
    try:
        SandboxCA(work / "state")
        shutil.copy(dovecot_module.__file__, work / "sandbox_dovecot.py")
        (work / "check.py").write_text(ROOTLESS_CHECK)
        command = [sys.executable, "check.py"]
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in [work, *work.rglob("*")]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            command = ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "check.py"]
        result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-2].endswith(
            "The Microsoft Exchange IMAP4 service is ready."
        )
        assert result.stdout.splitlines()[-1] == "1"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_installed_dovecot_is_23_and_a_24_is_refused_with_a_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (dovecot_module.dovecot_version() or "").startswith("2.3.")
    assert dovecot_module.dovecot_problem() is None
    # Debian 13's Dovecot 2.4 configures OAuth2 differently; show what the sandbox says there.
    monkeypatch.setattr(dovecot_module, "dovecot_version", lambda: "2.4.1")
    problem = dovecot_module.dovecot_problem() or ""
    assert "Dovecot 2.4.1 is installed" in problem
    assert not dovecot_module.dovecot_available()
