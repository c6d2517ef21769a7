"""Which mail server sends a given From address (From Filter: exact address, domain, catch-all; by Priority)."""

from __future__ import annotations

from mailgate.outbox.compose import InvalidMessage
from mailgate.servers.models import MailServer


def sending_servers() -> list[MailServer]:
    """Active servers with an SMTP host, in Priority order."""
    return list(
        MailServer.objects.filter(active=True).exclude(smtp_host="").order_by("priority", "name")
    )


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


def check_send_as(server: MailServer, address: str) -> None:
    """OAuth mailboxes may only send as themselves or as an address listed in Send As Addresses."""
    if not server.is_oauth:
        return
    address = address.lower()
    mailbox = server.username.lower()
    if address == mailbox:
        return
    domain = address.rsplit("@", 1)[-1]
    allowed = set(server.send_as_entries())
    if address in allowed or "*@" + domain in allowed or "@" + domain in allowed:
        return
    raise InvalidMessage.one(
        "from",
        f"server {server.name!r} authenticates as {mailbox}, which may not send as {address}: "
        "the provider would refuse it (Exchange: SendAsDenied). Grant 'Send As' to the mailbox "
        "(Exchange: Add-RecipientPermission; Gmail: Settings > Accounts > Send mail as) and add "
        "the address to the server's Send As Addresses, or send from the mailbox's own address",
    )


def resolve_server(server: MailServer | str | int | None, address: str) -> MailServer:
    """The given server (checked) or the routed one, with the send-as rule applied."""
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
    check_send_as(chosen, address)
    return chosen
