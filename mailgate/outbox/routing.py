"""Which mail server sends a given From address (From Filter: exact address, domain, catch-all; by Priority)."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from django.db import connection
from django.db.models.signals import post_delete, post_migrate, post_save

from mailgate.outbox.compose import InvalidMessage
from mailgate.servers.models import MailServer

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


def choose_server(address: str, servers: list[MailServer] | None = None) -> MailServer:
    """The server for a From address: an exact From Filter entry, then its domain, then no filter."""
    address = address.lower()
    domain = address.rsplit("@", 1)[-1]
    candidates = sending_servers() if servers is None else servers
    exact = [s for s in candidates if address in s.from_filter_entries()]
    if exact:
        return exact[0]
    by_domain = [s for s in candidates if _domain_entries(domain) & set(s.from_filter_entries())]
    if by_domain:
        return by_domain[0]
    catch_all = [s for s in candidates if not s.from_filter_entries()]
    if catch_all:
        return catch_all[0]
    if not candidates:
        raise InvalidMessage.one(
            "from",
            "no active mail server with an SMTP Server is configured: add one under "
            "Settings > Technical > Mail Server > Mail Servers",
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


def resolve_server(server: MailServer | str | int | None, address: str, *also: str) -> MailServer:
    """The given server or the routed one; the From Filter and the send-as rule are checked
    against it for the address and every other sender address of the message (`also`: a raw
    message's From header)."""
    if server is None:
        chosen = choose_server(address)
    else:
        if isinstance(server, MailServer):
            chosen = server
        else:
            lookup = {"pk": server} if isinstance(server, int) else {"name": server}
            found = MailServer.objects.filter(**lookup).first()
            if found is None:
                raise InvalidMessage.one("server", f"no mail server named {server!r}")
            chosen = found
        if not chosen.active or not chosen.smtp_host:
            raise InvalidMessage.one(
                "server", f"mail server {chosen.name!r} is not active or has no SMTP Server"
            )
    for sender in dict.fromkeys((address, *also)):
        check_from_filter(chosen, sender)
        check_send_as(chosen, sender)
    return chosen
