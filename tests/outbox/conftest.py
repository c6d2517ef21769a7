from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mailgate.outbox.worker import Deliverer
from mailgate.servers.models import MailServer
from tests.smtpsink import SMTPSink


@pytest.fixture(params=["steps", "pipelining", "bdat"])
def sink(request: pytest.FixtureRequest) -> Iterator[SMTPSink]:
    """A real SMTP server on loopback, once for each way the worker can talk to one: command by
    command, with PIPELINING (MAIL/RCPT/DATA together), and with CHUNKING (BDAT)."""
    with SMTPSink(
        pipelining=request.param != "steps", chunking="yes" if request.param == "bdat" else ""
    ) as running:
        yield running


@pytest.fixture
def make_server(db: None) -> Callable[..., MailServer]:
    counter = iter(range(1, 1000))

    def make(sink: SMTPSink | None = None, **fields: Any) -> MailServer:
        values: dict[str, Any] = {
            "name": f"server {next(counter)}",
            "auth_method": "password",
            "smtp_host": "127.0.0.1",
            "smtp_port": sink.port if sink else 2525,
            "smtp_security": "none",
            "limit_per_minute": 10_000,
        }
        values.update(fields)
        return MailServer.objects.create(**values)

    return make


@pytest.fixture
def deliver() -> Callable[[], bool]:
    deliverer = Deliverer()
    stop = threading.Event()

    def run() -> bool:
        return deliverer.step(stop)

    yield run
    deliverer.close_all()
