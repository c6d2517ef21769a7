"""mailgate: send and receive mail through OAuth 2.0 mailboxes (Microsoft 365, Gmail)."""

__version__ = "0.1.0"
