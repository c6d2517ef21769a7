"""Send test message: one real message through a chosen server, its outcome shown on the server's page.

The message goes through the outbox like any other (so it is listed there with its attempts);
the request waits a few seconds for the worker's outcome, then shows what it knows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from mailgate.outbox.compose import InvalidMessage
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.outbox.submit import enqueue
from mailgate.servers.models import MailServer

WAIT_SECONDS = 10.0
POLL_SECONDS = 0.2


@dataclass
class SendTestResult:
    to: str
    outcome: str  # sent, queued, deferred, held, failed, refused
    text: str
    message: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def test_sender(server: MailServer) -> str:
    """The From of a test message: the mailbox (Username), else the first address in From Filter."""
    for candidate in [server.username, *server.from_filter_entries()]:
        if "@" in candidate and not candidate.startswith(("@", "*")):
            return candidate
    return ""


def send_test_message(server: MailServer, to: str, *, wait: float = WAIT_SECONDS) -> SendTestResult:
    """Queue a test message from the server's mailbox to `to` through `server`, and wait up to
    `wait` seconds for its outcome."""
    to = to.strip()
    sender = test_sender(server)
    if not sender:
        return SendTestResult(
            to,
            "refused",
            "No sender address: enter the mailbox's address as Username (or an address in "
            "From Filter), Save, then send again.",
        )
    if not to:
        return SendTestResult(to, "refused", "Type the address the test message goes to.")
    try:
        message = enqueue(
            from_address=sender,
            to=[to],
            subject=f"mailgate test message via {server.name}",
            text=(
                f"This is a test message from mailgate, sent through the mail server "
                f"{server.name!r} as {sender}.\n\nIf you can read it, sending works.\n"
            ),
            server=server,
            source="console",
        )
    except InvalidMessage as exc:
        problems = "; ".join(f"{field}: {problem}" for field, problem in exc.errors.items())
        return SendTestResult(to, "refused", problems)
    deadline = time.monotonic() + wait
    while True:
        message = OutgoingMessage.objects.get(pk=message.pk)
        if message.status in (Status.SENT, Status.FAILED, Status.HELD, Status.DEFERRED):
            break
        if time.monotonic() >= deadline:
            return SendTestResult(
                to,
                "queued",
                f"Queued, not sent yet after {wait:g} s: is the worker running (`mailgate run` "
                "or `mailgate worker`)? The Outbox shows its progress.",
                message.pk,
            )
        time.sleep(POLL_SECONDS)
    if message.status == Status.SENT:
        text = f"Sent from {sender} to {to}. The server answered: {message.last_reply}".rstrip(": ")
    else:
        said = message.last_reply or message.last_error
        text = " ".join(part for part in (said, message.diagnosis) if part) or message.status
    return SendTestResult(to, str(message.status), text, message.pk)
