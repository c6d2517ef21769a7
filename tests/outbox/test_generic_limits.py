"""A company's own relay is not throttled unless the administrator asks: 0 = no limit."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mailgate.outbox import enqueue
from mailgate.outbox.models import OutgoingMessage, ServerState, Status
from mailgate.servers.models import GENERIC_LIMITS, MailServer, default_limits
from mailgate.servers.validation import apply_defaults
from tests.smtpsink import SMTPSink


def test_password_and_certificate_servers_default_to_no_rate_limit_and_providers_keep_theirs() -> (
    None
):
    assert (GENERIC_LIMITS.per_minute, GENERIC_LIMITS.recipients_per_day) == (0, 0)
    for method in ("password", "certificate"):
        assert default_limits(method) == GENERIC_LIMITS
    outlook = default_limits("outlook")
    assert (outlook.per_minute, outlook.recipients_per_day) == (30, 10_000)


def test_an_unlimited_server_takes_more_than_a_minute_s_worth_in_one_batch_and_many_recipients(
    make_server: Callable[..., MailServer], deliver: Callable[[], bool]
) -> None:
    with SMTPSink() as sink:
        server = make_server(sink, limit_per_minute=0, limit_recipients_per_day=0)
        for i in range(80):
            enqueue(from_address="app@example.com", to=[f"r{i}@example.org"], text="x")
        enqueue(
            from_address="app@example.com",
            to=[f"many{i}@example.org" for i in range(400)],
            text="to a big list",
        )
        assert deliver()
    assert OutgoingMessage.objects.filter(status=Status.SENT).count() == 81
    assert len(sink.received) == 81
    state = ServerState.objects.filter(server=server).first()
    assert state is None or not state.throttle_reason


def test_a_limit_set_by_the_administrator_still_holds_and_says_what_to_change(
    make_server: Callable[..., MailServer], deliver: Callable[[], bool]
) -> None:
    with SMTPSink() as sink:
        server = make_server(sink, limit_per_minute=5)
        for i in range(8):
            enqueue(from_address="app@example.com", to=[f"r{i}@example.org"], text="x")
        assert deliver()
        assert not deliver()  # the rest waits for the next minute
    assert len(sink.received) == 5
    reason = ServerState.objects.get(server=server).throttle_reason
    assert "5 messages per minute" in reason and "Messages per Minute" in reason
    assert "0 = no limit" in reason


@pytest.mark.parametrize("method", ["password", "certificate"])
def test_the_form_defaults_fill_no_limit_for_generic_servers(method: str) -> None:
    values: dict[str, object] = {"auth_method": method}
    apply_defaults(values)
    assert values["limit_per_minute"] == 0 and values["limit_recipients_per_day"] == 0
