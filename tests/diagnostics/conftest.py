"""The oauth tests' sandbox fixtures, reused for the connection test."""

from tests.oauth.conftest import (  # noqa: F401 - fixtures
    browser,
    fresh_user,
    gmail_server,
    idp,
    mg_sandbox,
    outlook_server,
    revocable_server,
)
