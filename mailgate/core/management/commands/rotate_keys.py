from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from mailgate.audit.log import record
from mailgate.crypto import rotate_all


class Command(BaseCommand):
    help = "Re-encrypt every stored secret with the newest key of MAILGATE_ENCRYPTION_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        count = rotate_all()
        record("keys_rotated")
        self.stdout.write(
            f"Re-encrypted {count} secret(s) with the newest key. Older keys can now be removed "
            "from MAILGATE_ENCRYPTION_KEYS."
        )
