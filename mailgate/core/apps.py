from __future__ import annotations

import contextlib
import os
import stat
from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created


def private_sqlite_file(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Keep the SQLite database file readable by its owner only (0600), like the key files:
    it holds encrypted secrets, password hashes and every queued message."""
    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict.get("NAME") or "")
    if not name or name == ":memory:" or name.startswith("file:"):
        return
    with contextlib.suppress(OSError):
        if stat.S_IMODE(os.stat(name).st_mode) & 0o077:
            os.chmod(name, 0o600)


class CoreConfig(AppConfig):
    name = "mailgate.core"
    label = "core"

    def ready(self) -> None:
        connection_created.connect(private_sqlite_file, dispatch_uid="core-private-sqlite")
