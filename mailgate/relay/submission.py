"""What the relay asks of the database, each a blocking call run off the event loop: checking an
AUTH, the checks at MAIL FROM, and committing a message to the outbox; every refusal is an SMTP
reply that names the problem."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db import DatabaseError, connection, connections

from mailgate.keys.check import APIKeyError, count_request, find_key, is_active, note_use
from mailgate.keys.models import APIKey
from mailgate.outbox import enqueue
from mailgate.outbox.compose import InvalidMessage, parse_mailbox
from mailgate.outbox.routing import resolve_server, sending_servers
from mailgate.outbox.submit import MessageTooLarge

log = logging.getLogger("mailgate.relay")
P = ParamSpec("P")
T = TypeVar("T")

# The SIZE advertised when no server is configured yet (a message is refused at DATA then).
DEFAULT_SIZE = 25 * 1024 * 1024
# How long the advertised SIZE is reused before the servers are asked again.
SIZE_CACHE_SECONDS = 30.0
# An SMTP reply line is at most 512 octets (RFC 5321 4.5.3.1.5) with its code.
MAX_TEXT = 480


class Refused(Exception):
    """A refusal as an SMTP reply: `reply` is the whole line, code, enhanced code and text."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        self.reply = f"{code} {enhanced} {one_line(text)}"
        super().__init__(self.reply)


def one_line(text: str) -> str:
    """A reply text: one line of printable ASCII, no longer than MAX_TEXT."""
    text = " ".join(text.split()).replace("…", "...")
    text = text.encode("ascii", "replace").decode("ascii")
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


@dataclass(frozen=True)
class Client:
    """An authenticated relay client: the API key it logged in with (never the key itself)."""

    key_id: int
    name: str
    prefix: str

    @property
    def owner_tag(self) -> str:
        return f"apikey:{self.key_id}"


def _database_job(func: Callable[P, T]) -> Callable[P, T]:
    """Run on the thread's database connection, kept from job to job (opening one per message
    cost SQLite a checkpoint at each close); a database that cannot answer is a 451 (retry), and
    the connection is dropped so the next job opens a new one."""

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except DatabaseError as exc:
            connection.close()
            log.error(
                "relay: the database did not answer (%s): %s", func.__name__, type(exc).__name__
            )
            raise Refused(
                451, "4.3.0", "The queue is unavailable at the moment: try again later"
            ) from exc

    return run


@_database_job
def login(username: str, password: str) -> Client | None:
    """The client for a username (the key's name) and password (the key); None when they do
    not match an active key of scope send or admin."""
    try:
        key = find_key(password, {"send"})
    except APIKeyError:
        return None
    if key.name != username:
        return None
    note_use(key)
    return Client(key.pk, key.name, key.prefix)


def _count_message(client: Client) -> None:
    """The client's key is still active: count the message against its rate."""
    if not is_active(client.key_id):
        raise Refused(535, "5.7.8", f"The API key {client.prefix}... was revoked")
    try:
        # The rate is counted by the key's id (and names its prefix): no need to load the row.
        count_request(APIKey(pk=client.key_id, prefix=client.prefix))
    except APIKeyError as exc:
        raise Refused(451, "4.7.1", str(exc)) from None


@_database_job
def check_sender(client: Client, address: str) -> None:
    """At MAIL FROM: the key is still active and within its rate (the message is counted), and
    the address may send through the server it routes to (From Filter, Send As)."""
    _count_message(client)
    if address:
        try:
            resolve_server(None, parse_mailbox("from", address).address)
        except InvalidMessage as exc:
            raise refusal(exc) from None


def close_connection() -> None:
    """Close this thread's database connections (each pool thread keeps its own)."""
    connections.close_all()


def lf_line_ends(data: bytes) -> bytes:
    """SMTP ends the content with CRLF whatever the client's line ends: a message written with LF
    throughout (smtplib sends bytes as they are) keeps LF to its end, so the outbox reads it as an
    LF message rather than as one that mixes line ends (which it refuses)."""
    if data.endswith(b"\r\n") and b"\r" not in data[:-2] and b"\n" in data[:-2]:
        return data[:-2] + b"\n"
    return data


@_database_job
def queue(
    client: Client, mail_from: str, recipients: list[str], data: bytes, *, count: bool = False
) -> int:
    """Commit the message to the outbox (the envelope's sender and recipients, the bytes as the
    raw message) and return its id. With `count` (MAIL FROM was answered without asking the
    database) the key must still be active and the message is counted against its rate here.
    In autocommit mode the row's INSERT is its own transaction, committed when this returns."""
    assert connection.get_autocommit(), "the relay answers 250 only for a committed row"
    if count:  # MAIL FROM was answered without the database: check the key now
        _count_message(client)
    message = enqueue(
        raw=lf_line_ends(data),
        from_address=mail_from or None,
        to=recipients,
        source="smtp",
        submitted_by=client.owner_tag,
    )
    log.debug("relay: queued message %s for key %s", message.pk, client.name)
    return int(message.pk)


def refusal(exc: InvalidMessage) -> Refused:
    """The SMTP reply for a message enqueue() refused."""
    text = "; ".join(f"{field}: {problem}" for field, problem in exc.errors.items())
    if isinstance(exc, MessageTooLarge):
        return Refused(552, "5.3.4", text)
    fields = set(exc.errors)
    if fields & {"from", "server"}:
        return Refused(553, "5.7.1", text)
    if fields == {"to"}:
        return Refused(552, "5.5.3", text)
    if any(f.startswith(("to[", "cc[", "bcc[")) for f in fields):
        return Refused(553, "5.1.3", text)
    return Refused(554, "5.6.0", text)


class SizeLimit:
    """The SIZE to advertise: the largest message any active sending server takes."""

    def __init__(self) -> None:
        self._value = DEFAULT_SIZE
        self._at = 0.0

    def cached(self) -> int | None:
        """The SIZE last read, while it is fresh (no database needed: the event loop asks this
        first); None when it is time to ask the servers again."""
        return self._value if time.monotonic() - self._at <= SIZE_CACHE_SECONDS else None

    @_database_job
    def current(self) -> int:
        if time.monotonic() - self._at > SIZE_CACHE_SECONDS:
            sizes = [s.max_message_bytes for s in sending_servers()]
            self._value = max(sizes, default=DEFAULT_SIZE)
            self._at = time.monotonic()
        return self._value


def max_recipients() -> int:
    return int(settings.MAILGATE_MAX_RECIPIENTS)
