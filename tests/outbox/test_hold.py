"""Whether a server's mail is held: one answer for a server, a query and a join."""

from __future__ import annotations

import pytest
from django.utils import timezone

from mailgate.outbox.hold import held_servers, is_held, not_held
from mailgate.outbox.models import OutgoingMessage
from mailgate.servers.models import MailServer

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("reason", "since", "held"),
    [("", False, False), ("535 refused", False, True), ("", True, True), ("why", True, True)],
)
def test_a_reason_or_a_time_holds_a_server_and_every_reader_agrees(reason, since, held):
    server = MailServer.objects.create(
        name="S",
        auth_method="password",
        smtp_host="127.0.0.1",
        hold_reason=reason,
        held_at=timezone.now() if since else None,
    )
    OutgoingMessage.objects.create(server=server, from_address="a@example.com", message_id="<1@x>")
    assert is_held(server) is held
    assert held_servers().filter(pk=server.pk).exists() is held
    assert MailServer.objects.filter(not_held()).exists() is not held
    assert OutgoingMessage.objects.filter(not_held("server__")).exists() is not held
