"""Database connections outlive a request or a worker step: opening one costs more than a whole API
request (SQLite runs its pragmas, PostgreSQL starts a backend)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate import conf

pytestmark = pytest.mark.nodb


@pytest.mark.parametrize("url", ["", "postgresql://u@127.0.0.1:5432/mail"], ids=["sqlite", "pg"])
def test_both_databases_keep_connections_for_a_minute_checking_them_first(
    tmp_path: Path, url: str
) -> None:
    env = {"MAILGATE_HOME": str(tmp_path)}
    if url:
        env["MAILGATE_DATABASE_URL"] = url
    settings = conf.load(env).database.as_django()
    assert (settings["CONN_MAX_AGE"], settings["CONN_HEALTH_CHECKS"]) == (60, True)
