"""The sandbox fixtures, shared with other packages' tests through tests/sandbox_fixtures.py."""

from tests.sandbox_fixtures import sandbox, sandbox_factory, sandbox_template

__all__ = ["sandbox", "sandbox_factory", "sandbox_template"]
