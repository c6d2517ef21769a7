"""POP3 fetching against a real Dovecot (password login): UIDL exactly once, Keep or Delete."""

from __future__ import annotations

import pytest

from mailgate.inbox import fetcher
from mailgate.inbox.fetcher import fetch_server
from mailgate.inbox.models import IncomingMessage, RemoteAction
from mailgate.inbox.store import parse_pending
from mailgate.servers.models import MailServer
from tests.inbox.conftest import Mailbox, PasswordDovecot, make_server, message


@pytest.fixture
def pop3_server(
    password_dovecot: PasswordDovecot, mailbox: Mailbox, trust: None, inbox_home: object, db: None
) -> MailServer:
    return make_server(password_dovecot, mailbox, "pop3")


def counts(server: MailServer) -> dict[str, int]:
    server.refresh_from_db()
    report = fetch_server(server)
    assert report.ok, report.error
    parse_pending()  # the fetch stores bytes; the hand-off parses them
    return report.counts


def test_keep_takes_each_message_once_and_leaves_the_maildrop(
    pop3_server: MailServer, mailbox: Mailbox
) -> None:
    mailbox.append(message("there before"))
    assert counts(pop3_server) == {"": 0}
    mailbox.append(message("new"), flags="(\\Flagged)")
    before = mailbox.flags()
    assert counts(pop3_server) == {"": 1}
    assert counts(pop3_server) == {"": 0}
    row = IncomingMessage.objects.get()
    assert row.subject == "new" and row.uidl and row.raw_bytes() == message("new")
    assert mailbox.count() == 2
    # Dovecot's POP3 marks retrieved mail \Seen (and ends \Recent) in its IMAP view on its own;
    # Keep sends no DELE, so every other flag stays.
    ignored = {"\\Seen", "\\Recent"}
    after = mailbox.flags()
    assert {uid: f - ignored for uid, f in after.items()} == {
        uid: f - ignored for uid, f in before.items()
    }


def test_fetch_existing_and_delete(pop3_server: MailServer, mailbox: Mailbox) -> None:
    pop3_server.fetch_existing = True
    pop3_server.after_fetch = "delete"
    pop3_server.save()
    for i in range(3):
        mailbox.append(message(f"m{i}"))
    assert counts(pop3_server) == {"": 3}
    assert mailbox.count() == 0
    assert set(IncomingMessage.objects.values_list("remote_action", flat=True)) == {
        RemoteAction.DONE
    }


def test_a_delete_interrupted_after_the_commit_is_finished_next_time(
    pop3_server: MailServer, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    pop3_server.fetch_existing = True
    pop3_server.after_fetch = "delete"
    pop3_server.save()
    mailbox.append(message("a"))
    mailbox.append(message("b"))

    crashing = [True]

    def crash() -> None:
        if crashing:
            raise ConnectionResetError("the process died here")

    monkeypatch.setattr(fetcher, "_pause_after_store", crash)
    report = fetch_server(pop3_server)
    assert not report.ok
    assert IncomingMessage.objects.count() == 2 and mailbox.count() == 2
    crashing.clear()
    assert counts(pop3_server) == {"": 0}
    assert IncomingMessage.objects.count() == 2 and mailbox.count() == 0


def test_a_large_message_is_streamed(
    pop3_server: MailServer, mailbox: Mailbox, inbox_home: object
) -> None:
    pop3_server.fetch_existing = True
    pop3_server.save()
    line = b".starts with a dot " + b"z" * 900 + b"\r\n"
    raw = message("big pop") + line * 3000
    mailbox.append(raw)
    assert counts(pop3_server) == {"": 1}
    row = IncomingMessage.objects.get()
    assert row.raw_file and row.raw_bytes() == raw
