"""Which mail server sends a given From address: From Filter, then mailbox, then connected, then Priority."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models.signals import post_delete, post_migrate, post_save

from mailgate.outbox.compose import InvalidMessage
from mailgate.servers.models import MailServer, ServerStatus

# The server list is read once per transaction (and at most every CACHE_SECONDS outside one) instead
# of once per message: one query per enqueued message was a third of the enqueue time. Saves and
# deletes in this process, and holds and releases, drop it at once; other processes' changes are
# seen within CACHE_SECONDS, and the worker re-checks active/held when it claims the mail anyway.
CACHE_SECONDS = 2.0
_clock = time.monotonic

_generation = itertools.count()
_current_generation = next(_generation)


class _Cache(threading.local):
    servers: list[MailServer] | None = None
    scope: object = None
    generation = -1
    expires = 0.0


_cache = _Cache()


def forget_servers(**kwargs: Any) -> None:
    """Drop every thread's cached server list (a signal receiver, hence the keyword arguments)."""
    global _current_generation
    _current_generation = next(_generation)


post_save.connect(forget_servers, sender=MailServer, dispatch_uid="outbox-routing-save")
post_delete.connect(forget_servers, sender=MailServer, dispatch_uid="outbox-routing-delete")
# A flushed database (TransactionTestCase) announces itself only through post_migrate.
post_migrate.connect(forget_servers, dispatch_uid="outbox-routing-migrate")


def _transaction_scope() -> object:
    """The outermost atomic block in progress, or None in autocommit mode."""
    blocks = connection.atomic_blocks
    return blocks[0] if blocks else None


def sending_servers() -> list[MailServer]:
    """Active servers with an SMTP host, in Priority order (shared instances: do not modify them)."""
    scope = _transaction_scope()
    now = _clock()
    if (
        _cache.servers is not None
        and _cache.scope is scope
        and _cache.generation == _current_generation
        and now < _cache.expires
    ):
        return _cache.servers
    generation = _current_generation
    servers = list(
        MailServer.objects.filter(active=True).exclude(smtp_host="").order_by("priority", "name")
    )
    _cache.servers, _cache.scope = servers, scope
    _cache.generation, _cache.expires = generation, now + CACHE_SECONDS
    return servers


def _domain_entries(domain: str) -> set[str]:
    return {domain, "@" + domain, "*@" + domain}


# A server counts as connected when its last check passed: its token works (OAuth) or its
# connection test succeeded (password, certificate).
CONNECTED = (ServerStatus.TOKEN_VALID, ServerStatus.READY)


@dataclass(frozen=True)
class Route:
    """The server a message goes through and why (stored on the message)."""

    server: MailServer
    reason: str


def _filter_rank(server: MailServer, address: str, domain: str) -> int | None:
    """0: the From Filter names the address, 1: its domain, 2: no filter; None: it excludes it."""
    entries = server.from_filter_entries()
    if not entries:
        return 2
    if address in entries:
        return 0
    if _domain_entries(domain) & set(entries):
        return 1
    return None


def _is_mailbox(server: MailServer, address: str) -> bool:
    """Whether the server signs in as the address or lists it among its Send As Addresses."""
    return address == server.username.lower() or address in server.send_as_entries()


def route(address: str, servers: list[MailServer] | None = None) -> Route:
    """The server for a From address without an explicit server, with the reason.

    In order: a From Filter naming the address, then its domain, then servers without a filter;
    within each, a server whose Username or Send As Addresses equal the address; then a connected
    server (Token Valid / Ready) over one that is not; then Priority (and name).
    """
    address = address.lower()
    domain = address.rsplit("@", 1)[-1]
    candidates = sending_servers() if servers is None else servers
    ranked = []
    for server in candidates:
        rank = _filter_rank(server, address, domain)
        if rank is not None:
            mailbox = _is_mailbox(server, address)
            connected = server.status in CONNECTED
            ranked.append(
                ((rank, not mailbox, not connected, server.priority, server.name), server)
            )
    if ranked:
        key, server = min(ranked, key=lambda pair: pair[0])
        reasons = [
            ("From Filter names the address", "From Filter names the domain", "no From Filter")[
                key[0]
            ]
        ]
        if not key[1]:
            reasons.append("its mailbox (Username / Send As) is the From address")
        reasons.append(f"status {server.get_status_display()}")
        reasons.append(f"Priority {server.priority}")
        return Route(server, "routed by From: " + ", ".join(reasons))
    if not candidates:
        raise InvalidMessage.one(
            "from",
            "no active mail server with an SMTP Server is configured: add one under "
            "Settings \u203a Technical \u203a Mail Server \u203a Mail Servers",
        )
    raise InvalidMessage.one(
        "from",
        f"no active mail server accepts {address}: add the address or its domain to a server's "
        "From Filter, or leave one server's From Filter empty to send everything else",
    )


def accepts_from(server: MailServer, address: str) -> bool:
    """True when the server's From Filter lets it send as the address (an empty filter: all)."""
    entries = set(server.from_filter_entries())
    if not entries:
        return True
    address = address.lower()
    return address in entries or bool(_domain_entries(address.rsplit("@", 1)[-1]) & entries)


def check_from_filter(server: MailServer, address: str) -> None:
    """The chosen server's From Filter binds, however the server was chosen."""
    if not accepts_from(server, address):
        raise InvalidMessage.one(
            "from",
            f"server {server.name!r} does not send as {address.lower()}: its From Filter is "
            f"{', '.join(server.from_filter_entries())}. Send from an address in it, add the "
            "address or its domain to the filter, or choose another server",
        )


def choose_server(address: str, servers: list[MailServer] | None = None) -> MailServer:
    """The server for a From address (see route())."""
    return route(address, servers).server


def check_send_as(server: MailServer, address: str) -> None:
    """A mailbox may only send as itself or as an address listed in Send As Addresses.

    The rule holds for every OAuth server (the provider enforces it), and for a password or
    certificate server that signs in as an address or lists Send As Addresses, unless its From
    Filter names the senders: for such a relay the administrator's filter is the permission.
    """
    address = address.lower()
    mailbox = server.username.lower()
    allowed = set(server.send_as_entries())
    if not server.is_oauth and (
        server.from_filter_entries() or ("@" not in mailbox and not allowed)
    ):
        return
    if address == mailbox:
        return
    domain = address.rsplit("@", 1)[-1]
    if address in allowed or "*@" + domain in allowed or "@" + domain in allowed:
        return
    raise InvalidMessage.one(
        "from",
        f"server {server.name!r} authenticates as {mailbox or 'its Username'}, which may not send "
        f"as {address}: the provider would refuse it (Exchange: SendAsDenied). Grant 'Send As' to "
        "the mailbox (Exchange: Add-RecipientPermission; Gmail: Settings > Accounts > Send mail "
        "as) and add the address to the server's Send As Addresses, or send from the mailbox's "
        "own address",
    )


def resolve_route(server: MailServer | str | int | None, address: str, *also: str) -> Route:
    """The given server (checked) or the routed one, with the reason; the From Filter and the
    send-as rule are checked against it for the address and every other sender address of the
    message (`also`: a raw message's From header)."""
    if server is None:
        chosen = route(address)
    else:
        if isinstance(server, MailServer):
            found: MailServer | None = server
        else:
            lookup = {"pk": server} if isinstance(server, int) else {"name": server}
            found = MailServer.objects.filter(**lookup).first()
            if found is None:
                raise InvalidMessage.one("server", f"no mail server named {server!r}")
        assert found is not None
        if not found.active or not found.smtp_host:
            raise InvalidMessage.one(
                "server", f"mail server {found.name!r} is not active or has no SMTP Server"
            )
        chosen = Route(found, "chosen by the sender (server given explicitly)")
    for sender in dict.fromkeys((address, *also)):
        check_from_filter(chosen.server, sender)
        check_send_as(chosen.server, sender)
    return chosen


def resolve_server(server: MailServer | str | int | None, address: str, *also: str) -> MailServer:
    """The given server (checked) or the routed one, with the From Filter and send-as rules applied."""
    return resolve_route(server, address, *also).server
