"""A relay on loopback with its self-signed certificate, an API key of scope send, and a client."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailgate.keys.models import APIKey
from mailgate.relay.server import Relay
from mailgate.relay.tls import self_signed, server_context


@dataclass
class RunningRelay:
    relay: Relay
    ca_file: Path
    key_name: str
    key: str

    @property
    def port(self) -> int:
        assert self.relay.port is not None
        return self.relay.port

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def connect(self, *, starttls: bool = True, login: bool = True) -> smtplib.SMTP:
        """An smtplib client to the relay: EHLO, STARTTLS (certificate verified), AUTH."""
        client = smtplib.SMTP("localhost", self.port, timeout=60)
        client.ehlo("app.example")
        if starttls:
            client.starttls(context=self.client_context())
            client.ehlo("app.example")
        if login:
            client.login(self.key_name, self.key)
        return client


@pytest.fixture
def start_relay(tmp_path: Path, transactional_db: None) -> Iterator[Callable[..., RunningRelay]]:
    """Start a relay (by default plain logins need STARTTLS even on loopback, as for a remote
    client); the database rows it writes from its own threads are committed (transactional_db)."""
    started: list[Relay] = []

    def start(*, plain_on_loopback: bool = False, listen_tls: bool = False) -> RunningRelay:
        context = server_context(None, None, home=tmp_path, hostname="localhost")
        relay = Relay(
            ("127.0.0.1", 0),
            context,
            listen_tls=("127.0.0.1", 0) if listen_tls else None,
            plain_on_loopback=plain_on_loopback,
            hostname="localhost",
        )
        relay.start()
        started.append(relay)
        _, key = APIKey.issue(f"erp-{len(started)}", scope="send")
        cert, _ = self_signed(tmp_path, "localhost")
        return RunningRelay(relay, cert, f"erp-{len(started)}", key)

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture
def running_relay(start_relay: Callable[..., RunningRelay]) -> RunningRelay:
    return start_relay()
