"""IMAP / POP replies of Exchange Online and Gmail in the reply catalogue."""

from __future__ import annotations

import pytest

from mailgate.providers.replies import diagnose_reply


@pytest.mark.parametrize(
    ("provider", "reply", "title"),
    [
        ("microsoft", "AUTHENTICATE failed.", "IMAP/POP authentication refused"),
        (
            "microsoft",
            "-ERR Authentication failure: unknown user name or bad password.",
            "IMAP/POP authentication refused",
        ),
        (
            "microsoft",
            "User is authenticated but not connected.",
            "Signed in, but the mailbox cannot be opened",
        ),
        ("microsoft", "Server Unavailable. 15", "Exchange mailbox server unavailable"),
        (
            "google",
            "[ALERT] Your account is not enabled for IMAP use. Please visit your Gmail settings page.",
            "IMAP or POP is off for this Gmail account",
        ),
        ("google", "[ALERT] Please log in via your web browser", "Gmail wants a sign-in in the browser"),
        ("google", "[ALERT] Too many simultaneous connections. (Failure)", "Too many IMAP connections"),
        ("google", "[THROTTLED] Account exceeded command or bandwidth limits.", "Gmail is throttling this account"),
        ("google", "[AUTHENTICATIONFAILED] Invalid credentials (Failure)", "Gmail rejected the token"),
    ],
)  # fmt: skip
def test_incoming_replies_are_diagnosed(provider: str, reply: str, title: str) -> None:
    found = diagnose_reply(provider, reply)
    assert found is not None and found.title == title
    assert found.fix
