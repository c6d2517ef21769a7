"""Attacks on mailgate, one file per kind (issue 14); fixtures shared with the outbox tests."""

from tests.oauth.conftest import idp, mg_sandbox, outlook_server
from tests.outbox.conftest import deliver, make_server, sink
from tests.sandbox_fixtures import sandbox, sandbox_factory, sandbox_template

__all__ = [
    "deliver",
    "idp",
    "make_server",
    "mg_sandbox",
    "outlook_server",
    "sandbox",
    "sandbox_factory",
    "sandbox_template",
    "sink",
]
