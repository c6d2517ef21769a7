"""mailgate's reader of `UID FETCH` answers (transports.imap._read_fetch), on exact byte streams."""

from __future__ import annotations

import imaplib
import io
from typing import Any

import pytest

from mailgate.transports.imap import _read_fetch


class FakeIMAP:
    """What _read_fetch uses of an imaplib connection: its buffered reader and its tags."""

    def __init__(self, stream: bytes) -> None:
        self.file: Any = io.BufferedReader(io.BytesIO(stream), buffer_size=64)
        self.tagged_commands: dict[bytes, None] = {b"A7": None}


def response(uid: int, body: bytes, *, uid_after: bool = False) -> bytes:
    if uid_after:
        return b"* 1 FETCH (BODY[] {%d}\r\n%s UID %d FLAGS (\\Seen))\r\n" % (len(body), body, uid)
    return b"* 1 FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (uid, len(body), body)


def test_bodies_by_uid_whatever_the_order_of_the_items() -> None:
    first = b"Subject: a\r\n\r\nUID 99 in the body is not a UID\r\n"
    second = b"Subject: b\r\n\r\n{12}\r\nlooks like a literal\r\n"
    stream = (
        response(5, first)
        + b"* 3 EXISTS\r\n"
        + response(6, second, uid_after=True)
        + b"* 2 FETCH (FLAGS (\\Seen))\r\n"
        + b"A7 OK Fetch completed.\r\n"
    )
    imap = FakeIMAP(stream)
    assert _read_fetch(imap, b"A7") == {5: first, 6: second}
    assert imap.tagged_commands == {}


def test_an_empty_message_and_a_vanished_one() -> None:
    stream = response(7, b"") + b"* 2 FETCH (UID 8 BODY[] NIL)\r\nA7 OK done\r\n"
    assert _read_fetch(FakeIMAP(stream), b"A7") == {7: b""}


def test_bytes_read_past_the_answer_are_read_next_by_imaplib() -> None:
    body = b"x" * 300
    stream = response(1, body) + b"A7 OK done\r\n* 4 EXISTS\r\n* 1 RECENT\r\nA8 OK next\r\n"
    imap = FakeIMAP(stream)
    imap.file = io.BufferedReader(io.BytesIO(stream), buffer_size=4096)  # reads it all at once
    assert _read_fetch(imap, b"A7") == {1: body}
    assert imap.file.readline() == b"* 4 EXISTS\r\n"
    assert imap.file.read(5) == b"* 1 R"
    assert imap.file.readline(100) == b"ECENT\r\n"
    assert imap.file.readline() == b"A8 OK next\r\n"
    assert isinstance(imap.file, io.BufferedReader)  # the connection's own reader again


def test_a_refused_fetch_and_a_dropped_connection_raise() -> None:
    with pytest.raises(imaplib.IMAP4.error, match="UID FETCH failed: NO"):
        _read_fetch(FakeIMAP(b"A7 NO [SERVERBUG] Internal error\r\n"), b"A7")
    with pytest.raises(imaplib.IMAP4.abort, match="BYE"):
        _read_fetch(FakeIMAP(b"* BYE Server shutting down.\r\n"), b"A7")
    with pytest.raises(imaplib.IMAP4.abort, match="closed the connection"):
        _read_fetch(FakeIMAP(response(1, b"abc")[:30]), b"A7")
