"""`mailgate fetch` against Dovecot: a progress bar when its output is a terminal (a stream whose
isatty() is true, the seam rich draws on), the plain lines when piped, one JSON list with --json."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from mailgate.servers.models import MailServer
from tests.inbox.conftest import Mailbox, message

ESC = "\x1b"


class TerminalBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fetch(*args: str, stdout: io.StringIO) -> tuple[int, str]:
    errors = io.StringIO()
    try:
        call_command("fetch", *args, stdout=stdout, stderr=errors)
    except SystemExit as exc:
        return int(exc.code or 0), errors.getvalue()
    return 0, errors.getvalue()


@pytest.fixture
def one_waiting(imap_server: MailServer, mailbox: Mailbox) -> MailServer:
    """The server, set to take mail already in the mailbox, and one message there."""
    imap_server.fetch_existing = True
    imap_server.save()
    mailbox.append(message("one"))
    return imap_server


def test_fetch_draws_a_bar_on_a_terminal_and_plain_lines_when_piped(
    one_waiting: MailServer, mailbox: Mailbox
) -> None:
    imap_server = one_waiting
    terminal = TerminalBuffer()
    assert _fetch(stdout=terminal) == (0, "")
    screen = terminal.getvalue()
    assert ESC in screen and f"Fetching {imap_server.name}" in screen
    assert f"{imap_server.name} INBOX: 1 new message" in screen

    mailbox.append(message("two"))
    mailbox.append(message("three"))
    piped = io.StringIO()
    assert _fetch(stdout=piped) == (0, "")
    assert piped.getvalue() == f"{imap_server.name} INBOX: 2 new messages\n"


def test_fetch_json_is_one_document_without_control_characters_even_on_a_terminal(
    one_waiting: MailServer,
) -> None:
    imap_server = one_waiting
    terminal = TerminalBuffer()
    assert _fetch("--json", stdout=terminal) == (0, "")
    assert ESC not in terminal.getvalue()
    (report,) = json.loads(terminal.getvalue())
    assert report == {
        "server": imap_server.name,
        "ok": True,
        "new": 1,
        "folders": {"INBOX": 1},
        "skipped": "",
        "error": "",
        "diagnosis": "",
    }


@pytest.mark.django_db
def test_fetch_json_without_incoming_servers_is_an_empty_list() -> None:
    out = io.StringIO()
    assert _fetch("--json", stdout=out) == (0, "")
    assert json.loads(out.getvalue()) == []
