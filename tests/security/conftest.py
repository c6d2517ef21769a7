"""Attacks on mailgate, one file per kind (issue 14); fixtures shared with the outbox tests."""

from tests.outbox.conftest import deliver, make_server, sink

__all__ = ["deliver", "make_server", "sink"]
