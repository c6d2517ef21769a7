"""IMAP IDLE: new mail makes the server due at once, against a real Dovecot."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from django.utils import timezone

from mailgate.inbox.fetcher import fetch_server
from mailgate.inbox.idle import IdleWatcher
from mailgate.inbox.models import FetchState
from tests.inbox.conftest import Mailbox, PasswordDovecot, make_server, message


@pytest.mark.django_db(transaction=True)
def test_new_mail_wakes_the_fetch_within_seconds(
    password_dovecot: PasswordDovecot, mailbox: Mailbox, trust: None, inbox_home: Path
) -> None:
    server = make_server(password_dovecot, mailbox, idle=True, poll_interval=3600)
    assert fetch_server(server).ok
    state = FetchState.objects.get(pk=server.pk)
    assert state.next_fetch_at is not None and state.last_fetch_at is not None
    assert (state.next_fetch_at - state.last_fetch_at).total_seconds() > 3000
    stop = threading.Event()
    watcher = IdleWatcher(server.pk, stop, idle_seconds=2)
    watcher.start()
    try:
        time.sleep(0.5)  # the watcher's IDLE is under way
        mailbox.append(message("instant"))
        deadline = time.monotonic() + 20
        while watcher.wakeups == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.wakeups >= 1
        state.refresh_from_db()
        assert state.next_fetch_at is not None and state.next_fetch_at <= timezone.now()
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert not watcher.is_alive()
    assert fetch_server(server, due_only=True).counts == {"INBOX": 1}


@pytest.mark.django_db(transaction=True)
def test_the_watcher_ends_when_idle_is_switched_off(
    password_dovecot: PasswordDovecot, mailbox: Mailbox, trust: None, inbox_home: Path
) -> None:
    server = make_server(password_dovecot, mailbox, idle=False)
    watcher = IdleWatcher(server.pk, threading.Event(), idle_seconds=1)
    watcher.start()
    watcher.join(timeout=10)
    assert not watcher.is_alive() and watcher.wakeups == 0
