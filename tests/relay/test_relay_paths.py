"""The relay reads a MAIL FROM / RCPT TO path as aiosmtpd does: its common "<local@domain>" form
without the email package's header parser (RelaySMTP._getaddr), every other form through aiosmtpd."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given
from hypothesis import strategies as st

from mailgate.relay.server import SIMPLE_PATH, RelaySMTP

pytestmark = pytest.mark.nodb

ARGUMENTS = [
    "<a@example.org>",
    "<bench1999@example.org>",
    "<first.last+tag@sub.example.co.uk>",
    "<a@example.org> SIZE=10240 BODY=8BITMIME",
    "<a@example.org>SIZE=1",
    "<a@example.org>  \tSIZE=1",
    "<a@example.org> (comment) SIZE=1",
    "<a@example.org>(comment)",
    "<a@example.org>   ",
    "<o'brien!#$%&*/=?^_`{|}~-@x-y.example>",
    "<>",
    "<a@example.org",
    "a@example.org",
    " <a@example.org>",
    "<a @example.org>",
    "<a@example.org >",
    "<.a@example.org>",
    "<a.@example.org>",
    "<a..b@example.org>",
    "<a@.example.org>",
    "<a@example..org>",
    "<a@[192.0.2.1]>",
    '<"quoted local"@example.org>',
    "<a(comment)@example.org>",
    "<@route:a@example.org>",
    "<jörg@corp.local>",
    "<a@b@example.org>",
    "<a@example.org>>",
    "<<a@example.org>>",
    "",
]


def readings(arg: str) -> tuple[object, object]:
    """What RelaySMTP and aiosmtpd make of the argument: (address, rest), or the error raised."""
    relay_connection = object.__new__(RelaySMTP)  # _getaddr reads only local_part_limit

    def reading(getaddr: Callable[[str], object]) -> object:
        try:
            return getaddr(arg)
        except Exception as exc:  # aiosmtpd raises IndexError for " <": so must we
            return type(exc)

    return reading(relay_connection._getaddr), reading(
        lambda value: SMTP._getaddr(relay_connection, value)
    )


@pytest.mark.parametrize("arg", ARGUMENTS)
def test_a_path_reads_as_aiosmtpd_reads_it(arg: str) -> None:
    ours, theirs = readings(arg)
    assert ours == theirs


def test_the_common_form_takes_the_short_way() -> None:
    assert SIMPLE_PATH.match("<bench1@example.org>")
    assert not SIMPLE_PATH.match('<"x"@example.org>')


@given(st.text(alphabet='ab.@<>"() \t[]:,;\\-+é1=S', max_size=24))
def test_any_path_reads_as_aiosmtpd_reads_it(arg: str) -> None:
    ours, theirs = readings(arg)
    assert ours == theirs


PIECE = st.text(alphabet="ab.-+'é\" ()[]", max_size=6)


@given(PIECE, PIECE, PIECE, st.text(alphabet=" \t(ab)=S", max_size=8))
def test_paths_near_the_common_form_read_as_aiosmtpd_reads_them(
    before: str, local: str, domain: str, after: str
) -> None:
    ours, theirs = readings(f"{before}<{local}@{domain}>{after}")
    assert ours == theirs
