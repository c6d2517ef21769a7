"""Routing that follows the mailbox: From Filter, then Username / Send As, then connected, then Priority;
a never-connected OAuth server holds its mail until its account is connected."""

from __future__ import annotations

import pytest

from mailgate.outbox import enqueue
from mailgate.outbox.compose import InvalidMessage
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.outbox.routing import route
from mailgate.servers.models import ServerStatus
from mailgate.servers.signals import mail_may_flow


def _send(sender: str, **extra):
    return enqueue(from_address=sender, to=["a@example.org"], text="hello", **extra)


def test_with_two_unfiltered_servers_the_one_whose_mailbox_is_the_from_wins(make_server):
    # The case: "Demo Gmail" sorted first by name and Priority, yet alex is the Outlook one.
    make_server(name="A Gmail", auth_method="gmail", username="bob@gmail.example")
    outlook = make_server(
        name="B Outlook", auth_method="outlook", username="alex@contoso.example", priority=50
    )
    chosen = route("Alex@Contoso.example")
    assert chosen.server == outlook
    assert "its mailbox (Username / Send As) is the From address" in chosen.reason
    assert "Priority 50" in chosen.reason


def test_among_servers_for_the_same_mailbox_the_connected_one_wins(make_server):
    make_server(name="never connected", auth_method="outlook", username="alex@contoso.example")
    connected = make_server(
        name="connected",
        auth_method="outlook",
        username="alex@contoso.example",
        status=ServerStatus.TOKEN_VALID,
        priority=90,
    )
    message = _send("alex@contoso.example")
    assert message.server == connected
    assert message.status == Status.QUEUED
    assert message.route_reason == (
        "routed by From: no From Filter, its mailbox (Username / Send As) is the From address, "
        "status Token Valid, Priority 90"
    )


def test_a_send_as_address_counts_as_the_mailbox(make_server):
    make_server(name="first", priority=1, status=ServerStatus.READY)
    shared = make_server(
        name="shared",
        auth_method="outlook",
        username="app@contoso.example",
        send_as="sales@contoso.example",
        status=ServerStatus.TOKEN_VALID,
        priority=20,
    )
    assert route("sales@contoso.example").server == shared
    assert route("other@contoso.example").server.name == "first"


def test_a_from_filter_match_beats_a_mailbox_match(make_server):
    make_server(name="mailbox", auth_method="outlook", username="alex@contoso.example")
    filtered = make_server(name="filtered", from_filter="contoso.example", priority=99)
    chosen = route("alex@contoso.example")
    assert chosen.server == filtered
    assert chosen.reason.startswith("routed by From: From Filter names the domain")


def test_an_explicit_server_is_taken_as_given_and_recorded_so(make_server):
    make_server(name="connected", username="alex@contoso.example", status=ServerStatus.READY)
    other = make_server(name="other", priority=99)
    message = _send("alex@contoso.example", server="other")
    assert message.server == other
    assert message.route_reason == "chosen by the sender (server given explicitly)"


def test_an_unknown_explicit_server_is_refused_naming_the_field(make_server):
    make_server()
    with pytest.raises(InvalidMessage) as caught:
        _send("alex@contoso.example", server="nope")
    assert "server" in caught.value.errors


def test_mail_for_a_never_connected_server_is_held_until_its_account_is_connected(
    make_server, deliver
):
    server = make_server(
        name="Outlook", auth_method="outlook", username="alex@contoso.example", priority=1
    )
    message = _send("alex@contoso.example")
    assert message.status == Status.HELD
    assert message.diagnosis.startswith("connect your account: Outlook has no connected account")
    assert "Connect your Outlook account" in message.diagnosis
    server.refresh_from_db()
    assert server.hold_reason == message.diagnosis
    # The worker does not retry its host (127.0.0.1:2525 has nothing listening): it stays held.
    deliver()
    message.refresh_from_db()
    assert message.status == Status.HELD and message.attempts == 0
    # Connecting (here: the signal the token lifecycle sends) releases it.
    server.status = ServerStatus.TOKEN_VALID
    server.save(update_fields=["status"])
    mail_may_flow.send(sender=type(server), server=server)
    message.refresh_from_db()
    assert message.status == Status.QUEUED


def test_the_worker_holds_mail_queued_before_the_server_lost_its_account(make_server, deliver):
    server = make_server(auth_method="outlook", username="alex@contoso.example")
    message = OutgoingMessage.objects.create(
        server=server, from_address="alex@contoso.example", to=["a@example.org"], raw=b"x"
    )
    deliver()
    message.refresh_from_db()
    server.refresh_from_db()
    assert message.status == Status.HELD and message.attempts == 0
    assert server.hold_reason.startswith("connect your account")
