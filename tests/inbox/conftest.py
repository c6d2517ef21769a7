"""A real Dovecot with password logins (PLAIN over implicit TLS) for the incoming-mail tests, and a
mailbox helper that appends, flags and inspects messages over IMAP as the user would."""

from __future__ import annotations

import imaplib
import itertools
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailgate.sandbox import dovecot as dovecot_module
from mailgate.sandbox.ca import SandboxCA
from mailgate.sandbox.dovecot import INSTALL_HINT, DovecotServer
from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer
from tests.oauth.conftest import (  # noqa: F401 - fixtures for the XOAUTH2 tests
    browser,
    fresh_user,
    idp,
    outlook_server,
    revocable_server,
)
from tests.sandbox.mail_fixtures import IntrospectionServer, make_policy

PASSWORD = "s3cret-mailbox-pw"
USERS = [f"user{i:02d}@example.test" for i in range(60)]
_next_user = itertools.count()


@pytest.fixture(scope="module")
def mg_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """The sandbox (identity provider and its Dovecot with XOAUTH2), for the OAuth tests."""
    with Sandbox(tmp_path_factory.mktemp("sandbox-inbox"), dovecot=True) as sandbox:
        yield sandbox


@dataclass
class PasswordDovecot:
    ca: SandboxCA
    server: DovecotServer

    @property
    def imap_port(self) -> int:
        return self.server.imap_port

    @property
    def pop3_port(self) -> int:
        return self.server.pop3_port


@pytest.fixture(scope="session")
def password_dovecot() -> Iterator[PasswordDovecot]:
    if not dovecot_module.dovecot_available():
        pytest.fail(INSTALL_HINT)
    # Not pytest's tmp_path: as root, Dovecot's mail processes must traverse every parent.
    state = Path(tempfile.mkdtemp(prefix="mailgate-inbox-dovecot-"))
    ca = SandboxCA(state)
    introspection = IntrospectionServer(make_policy(state)).start()
    server = DovecotServer(
        state,
        cert_file=ca.cert_file,
        key_file=ca.key_file,
        introspection_url_base=introspection.base,
        password_users=dict.fromkeys(USERS, PASSWORD),
    )
    server.start()
    try:
        yield PasswordDovecot(ca, server)
    finally:
        server.stop()
        introspection.stop()
        shutil.rmtree(state, ignore_errors=True)


class Mailbox:
    """The user's own view of the mailbox: APPEND, flags, folders, over imaplib."""

    def __init__(self, dovecot: PasswordDovecot, user: str) -> None:
        self.dovecot = dovecot
        self.user = user

    def _client(self) -> imaplib.IMAP4_SSL:
        client = imaplib.IMAP4_SSL(
            "127.0.0.1",
            self.dovecot.imap_port,
            ssl_context=self.dovecot.ca.client_context(),
            timeout=20,
        )
        client.login(self.user, PASSWORD)
        return client

    def create(self, folder: str) -> None:
        client = self._client()
        try:
            client.create(folder)
        finally:
            client.logout()

    def delete_folder(self, folder: str) -> None:
        client = self._client()
        try:
            client.delete(folder)
        finally:
            client.logout()

    def append(self, raw: bytes, folder: str = "INBOX", flags: str = "") -> None:
        client = self._client()
        try:
            typ, data = client.append(folder, flags or None, None, raw)
            assert typ == "OK", data
        finally:
            client.logout()

    def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags (read-only EXAMINE, so looking changes nothing)."""
        client = self._client()
        try:
            client.select(f'"{folder}"', readonly=True)
            _typ, data = client.uid("FETCH", "1:*", "(FLAGS)")
            out: dict[int, set[str]] = {}
            for line in data:
                if not isinstance(line, bytes):
                    continue
                match = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)", line) or re.search(
                    rb"FLAGS \(([^)]*)\) UID (\d+)", line
                )
                if match is None:
                    continue
                a, b = match.groups()
                uid, flags = (a, b) if a.isdigit() else (b, a)
                out[int(uid)] = set(flags.decode().split())
            return out
        finally:
            client.logout()

    def count(self, folder: str = "INBOX") -> int:
        client = self._client()
        try:
            _typ, data = client.select(f'"{folder}"', readonly=True)
            return int(data[0] or 0)
        finally:
            client.logout()

    def uidvalidity(self, folder: str = "INBOX") -> int:
        client = self._client()
        try:
            _typ, data = client.status(f'"{folder}"', "(UIDVALIDITY)")
            return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))  # type: ignore[union-attr]
        finally:
            client.logout()


@pytest.fixture
def mailbox(password_dovecot: PasswordDovecot) -> Mailbox:
    return Mailbox(password_dovecot, USERS[next(_next_user) % len(USERS)])


@pytest.fixture
def inbox_home(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    settings.MAILGATE_HOME = tmp_path
    return tmp_path


@pytest.fixture
def trust(password_dovecot: PasswordDovecot, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(password_dovecot.ca.ca_file))


def make_server(
    dovecot: PasswordDovecot, mailbox: Mailbox, protocol: str = "imap", **fields: Any
) -> MailServer:
    port = dovecot.imap_port if protocol == "imap" else dovecot.pop3_port
    values: dict[str, Any] = {
        "name": f"{protocol} {mailbox.user}",
        "auth_method": "password",
        "username": mailbox.user,
        "password": PASSWORD,
        "incoming_protocol": protocol,
        "incoming_host": "127.0.0.1",
        "incoming_port": port,
        "incoming_security": "ssl",
        **fields,
    }
    server = MailServer.objects.create(**values)
    server.refresh_from_db()  # the password as stored (sealed), as a worker reads it
    return server


@pytest.fixture
def imap_server(
    password_dovecot: PasswordDovecot, mailbox: Mailbox, trust: None, inbox_home: Path, db: None
) -> MailServer:
    return make_server(password_dovecot, mailbox)


def message(subject: str = "Hello", body: str = "Hi there.\n", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = headers.pop("sender", "Supplier <billing@supplier.example>")
    msg["To"] = headers.pop("to", "sales@contoso.example")
    msg["Subject"] = subject
    msg["Date"] = "Wed, 02 Dec 2026 10:00:00 +0000"
    msg["Message-ID"] = headers.pop("message_id", f"<{subject.replace(' ', '.')}@supplier.example>")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes().replace(b"\n", b"\r\n")
