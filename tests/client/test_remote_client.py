"""mailgate.client and its Django backend against a real `mailgate run` in a subprocess (no mocks).

The application side runs in another process with its own Django settings, as a different Django
project would; mail is delivered by the running mailgate's worker to an SMTP server on loopback.
"""

from __future__ import annotations

import email
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from mailgate.client import Attachment, Client, MailgateError
from tests.outbox.own_database import ROOT
from tests.smtpsink import SMTPSink

pytestmark = [
    pytest.mark.nodb,
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

SENDER = "erp@contoso.example"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    url: str
    api_key: str
    sink: SMTPSink
    env: dict[str, str]


def _mailgate(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailgate.cli", *args],
        env=env,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    home = tmp_path_factory.mktemp("mailgate-home")
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MAILGATE_") and key != "DJANGO_SETTINGS_MODULE"
    }
    env.update(
        MAILGATE_HOME=str(home),
        MAILGATE_ADMIN_EMAIL="admin@contoso.example",
        MAILGATE_ADMIN_PASSWORD="a-long-admin-password-1",
        PYTHONPATH=str(ROOT),
    )
    assert _mailgate(env, "migrate", "--verbosity", "0").returncode == 0
    with SMTPSink(users={"app@contoso.example": "relay-pass"}) as sink:
        added = _mailgate(
            env,
            "servers", "add", "--name", "Office relay", "--auth", "password",
            "--username", "app@contoso.example", "--password-stdin",
            "--smtp-host", "127.0.0.1", "--smtp-port", str(sink.port), "--security", "none",
            "--from-filter", SENDER,
            stdin="relay-pass\n",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        created = _mailgate(env, "apikeys", "create", "--name", "erp")
        assert created.returncode == 0, created.stderr
        api_key = created.stdout.strip().splitlines()[-1]
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailgate.cli",
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "mailgate run did not answer within 60 s"
                time.sleep(0.2)
            yield Running(url, api_key, sink, env)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


def _received(sink: SMTPSink, subject: str) -> list[email.message.Message]:
    found = []
    for item in list(sink.received):
        message = email.message_from_bytes(item.data)
        if message["Subject"] == subject:
            found.append(message)
    return found


def test_send_get_and_wait_deliver_a_message_once(running: Running) -> None:
    with Client(running.url, running.api_key) as client:
        queued = client.send(
            sender=SENDER,
            to="ann@example.org",
            subject="Invoice 42",
            text="Please find the invoice attached.",
            attachments=[Attachment("invoice.pdf", b"%PDF-1.4 fake", "application/pdf")],
        )
        assert queued.status in ("queued", "sending", "sent")
        assert client.get(queued.id).message_id == queued.message_id
        done = client.wait(queued.id, timeout=60)
    assert done.status == "sent" and done.server == "Office relay"
    (delivered,) = _received(running.sink, "Invoice 42")
    parts = {part.get_content_type(): part for part in delivered.walk()}
    assert parts["application/pdf"].get_payload(decode=True) == b"%PDF-1.4 fake"
    assert delivered["Message-ID"].strip("<>") in queued.message_id


def test_a_repeated_send_with_the_same_idempotency_key_queues_once(running: Running) -> None:
    with Client(running.url, running.api_key) as client:
        first = client.send(sender=SENDER, to="bob@example.org", subject="Once", text="x",
                            idempotency_key="order-7")  # fmt: skip
        again = client.send(sender=SENDER, to="bob@example.org", subject="Once", text="x",
                            idempotency_key="order-7")  # fmt: skip
        assert again.id == first.id
        client.wait(first.id, timeout=60)
    assert len(_received(running.sink, "Once")) == 1


def test_refusals_raise_with_the_status_and_the_field(running: Running) -> None:
    with Client(running.url, running.api_key) as client:
        with pytest.raises(MailgateError) as caught:
            client.send(sender=SENDER, to="not an address", subject="Bad", text="x")
        assert caught.value.status in (400, 422)
        assert any("to" in name for name in caught.value.errors) or "to" in caught.value.detail
        with pytest.raises(MailgateError) as missing:
            client.get(999_999)
        assert missing.value.status == 404
    with Client(running.url, "not-a-key") as stranger, pytest.raises(MailgateError) as refused:
        stranger.get(1)
    assert refused.value.status == 401


def test_utf8_local_parts_are_accepted_and_a_server_without_smtputf8_fails_them_naming_why(
    running: Running,
) -> None:
    """The client and the API take `ünal@corp.local` (RFC 6531); the sink does not offer
    SMTPUTF8, so the worker fails the message at once, saying so, and sends nothing."""
    with Client(running.url, running.api_key) as client:
        recipients = ["Ünal <ünal@corp.local>", "jörg@host.test"]
        queued = client.send(sender=SENDER, to=recipients, subject="Grüße 1", text="Hallo.")
        assert queued.data["to"] == ["ünal@corp.local", "jörg@host.test"]
        done = client.wait(queued.id, timeout=60)
    assert done.status == "failed" and done.attempts == 1
    assert "does not offer SMTPUTF8" in done.last_error and "ünal@corp.local" in done.last_error
    assert "SMTPUTF8" in done.data["diagnosis"]
    assert not [r for r in running.sink.received if "ünal@corp.local" in r.rcpt_tos]


def test_the_client_needs_an_address_and_a_key() -> None:
    with pytest.raises(ValueError, match="url"):
        Client("", "key")
    with pytest.raises(ValueError, match="api_key"):
        Client("http://127.0.0.1:1", "")


APPLICATION = textwrap.dedent(
    """
    import json, sys
    import django
    from django.conf import settings

    settings.configure(
        EMAIL_BACKEND="mailgate.client.django.EmailBackend",
        MAILGATE_URL=sys.argv[1],
        MAILGATE_API_KEY=sys.argv[2],
        DEFAULT_FROM_EMAIL="erp@contoso.example",
    )
    django.setup()
    from django.core.mail import EmailMultiAlternatives, get_connection, send_mail

    plain = send_mail("Plain from Django", "Hello from another project.", None, ["c@example.org"])
    rich = EmailMultiAlternatives(
        "Rich from Django", "Text part", "erp@contoso.example", ["d@example.org"],
        cc=["e@example.org"], reply_to=["support@contoso.example"], headers={"X-Order": "7"},
    )
    rich.attach_alternative("<p>HTML part</p>", "text/html")
    rich.attach("report.csv", "a,b\\n1,2\\n", "text/csv")
    sent = get_connection().send_messages([rich])
    print(json.dumps({"plain": plain, "rich": sent}))
    """
)


def test_another_django_project_sends_through_the_remote_backend(running: Running) -> None:
    env = {k: v for k, v in running.env.items() if not k.startswith("MAILGATE_")}
    done = subprocess.run(
        [sys.executable, "-c", APPLICATION, running.url, running.api_key],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"plain": 1, "rich": 1}
    deadline = time.monotonic() + 60
    while not (
        _received(running.sink, "Plain from Django") and _received(running.sink, "Rich from Django")
    ):
        assert time.monotonic() < deadline, "the messages were not delivered within 60 s"
        time.sleep(0.2)
    (rich,) = _received(running.sink, "Rich from Django")
    assert rich["X-Order"] == "7" and rich["Reply-To"] == "support@contoso.example"
    assert "e@example.org" in rich["Cc"]
    types = {part.get_content_type(): part for part in rich.walk()}
    assert types["text/html"].get_payload(decode=True).decode().strip() == "<p>HTML part</p>"
    assert types["text/plain"].get_payload(decode=True).decode().strip() == "Text part"
    assert types["text/csv"].get_payload(decode=True) == b"a,b\n1,2\n"
    (plain,) = _received(running.sink, "Plain from Django")
    assert plain["From"] == SENDER


def test_the_application_side_imports_no_django_for_the_client() -> None:
    code = "import sys, mailgate.client; print('django' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "False", done.stderr


def test_a_message_the_fields_cannot_express_goes_whole_as_raw() -> None:
    from email.mime.image import MIMEImage

    from django.core.mail import EmailMultiAlternatives

    from mailgate.client.django import fields_of

    message = EmailMultiAlternatives(
        "Logo", "text", SENDER, ["f@example.org"], bcc=["g@example.org"]
    )
    message.attach_alternative("<p>html</p>", "text/html")
    image = MIMEImage(b"\x89PNG\r\n\x1a\n fake", "png")
    image.add_header("Content-ID", "<logo>")
    message.attach(image)
    fields = fields_of(message)
    assert set(fields) == {"raw", "sender", "to", "cc", "bcc"}
    assert fields["bcc"] == ["g@example.org"]  # Bcc travels beside the raw message, not in it
    assert b"Content-ID: <logo>" in fields["raw"] and b"\r\n" in fields["raw"]
    assert b"g@example.org" not in fields["raw"]


def test_a_raw_message_with_a_utf8_local_part_carries_it_in_utf8() -> None:
    """Django would write `=?utf-8?b?...?=@corp.local`; the raw message says the address itself
    (RFC 6532), in its From and To headers, and keeps CRLF line ends."""
    from email.mime.image import MIMEImage

    from django.core.mail import EmailMultiAlternatives

    from mailgate.client.django import fields_of

    message = EmailMultiAlternatives(
        "Grüße", "text", "Jörg <jörg@corp.local>", ["ünal@host.test"], cc=["c@example.org"]
    )
    message.attach_alternative("<p>html</p>", "text/html")
    message.attach(MIMEImage(b"\x89PNG\r\n\x1a\n fake", "png"))
    raw = fields_of(message)["raw"]
    assert "From: Jörg <jörg@corp.local>\r\n".encode() in raw
    assert "To: ünal@host.test\r\n".encode() in raw
    assert b"Cc: c@example.org\r\n" in raw
    assert b"=?utf-8?" not in raw.split(b"\r\n\r\n")[0].split(b"Subject:")[0]
    assert raw.count(b"\nFrom:") + raw.startswith(b"From:") == 1
