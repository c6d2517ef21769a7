"""Outbox tuning from settings or the environment, parsed strictly, and the SMTP switches in use."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from mailgate.conf import SettingsError
from mailgate.outbox import conf, enqueue
from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.outbox.worker import Deliverer
from tests.smtpsink import SMTPSink


@pytest.mark.nodb
def test_the_defaults() -> None:
    config = conf.get()
    assert config.max_age == 2 * 86400 and config.batch_size == 200
    assert config.batch_bytes == 32 * 1024 * 1024
    assert config.smtp_pipelining is True and config.smtp_chunking is True


@pytest.mark.nodb
@pytest.mark.parametrize("raw", ["0", "off", "no", "false", " FALSE "])
def test_a_switch_turns_off_from_the_environment(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILGATE_OUTBOX_SMTP_CHUNKING", raw)
    assert conf.get().smtp_chunking is False
    assert conf.get().smtp_pipelining is True


@pytest.mark.nodb
def test_a_bad_switch_names_the_variable_and_the_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILGATE_OUTBOX_SMTP_PIPELINING", "sometimes")
    with pytest.raises(SettingsError) as caught:
        conf.get()
    assert str(caught.value) == (
        "MAILGATE_OUTBOX_SMTP_PIPELINING: 'sometimes' is not a boolean. "
        "Expected 1/0, true/false, yes/no or on/off."
    )


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("variable", "raw", "problem"),
    [
        ("MAILGATE_OUTBOX_BATCH_SIZE", "fifty", "'fifty' is not a number"),
        ("MAILGATE_OUTBOX_BATCH_SIZE", "0", "0.0 is below 1"),
        ("MAILGATE_OUTBOX_GATHER_SECONDS", "soon", "'soon' is not a number"),
        ("MAILGATE_OUTBOX_GATHER_SECONDS", "-1", "-1.0 is below 0"),
        ("MAILGATE_OUTBOX_GATHER_SECONDS", "nan", "'nan' is not a finite number"),
        ("MAILGATE_OUTBOX_LEASE_SECONDS", "inf", "'inf' is not a finite number"),
    ],
)
def test_a_bad_number_names_the_variable(
    variable: str, raw: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(SettingsError) as caught:
        conf.get()
    assert caught.value.variable == variable
    assert problem in str(caught.value)


@pytest.mark.parametrize("chunking", [True, False])
def test_the_worker_uses_bdat_only_while_chunking_is_on(
    chunking: bool, settings: Any, make_server: Any
) -> None:
    settings.MAILGATE_OUTBOX_SMTP_CHUNKING = chunking
    with SMTPSink(pipelining=True, chunking="yes") as sink:
        make_server(sink)
        for i in range(3):
            enqueue(from_address="app@example.com", to=[f"u{i}@example.org"], text=f"n{i}")
        deliverer = Deliverer()
        try:
            deliverer.step(threading.Event())
        finally:
            deliverer.close_all()
        assert set(OutgoingMessage.objects.values_list("status", flat=True)) == {Status.SENT}
        assert len(sink.received) == 3
        # With CHUNKING: the question, then a chunk and LAST per message; without: no BDAT at all.
        assert sink.bdat_commands == (7 if chunking else 0)
