"""Set up and inspect a throw-away mailgate database for the multi-process tests.

Run as `python -m tests.outbox.harness COMMAND JSON` with MAILGATE_DATABASE_URL pointing at it.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailgate.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from mailgate.outbox.models import (
        ConnectionLease,
        DeliveryAttempt,
        OutgoingMessage,
        ServerState,
    )
    from mailgate.outbox.submit import enqueue
    from mailgate.servers.models import MailServer

    command, argument = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    if command == "migrate":
        call_command("migrate", interactive=False, verbosity=0)
    elif command == "reset":
        DeliveryAttempt.objects.all().delete()
        OutgoingMessage.objects.all().delete()
        ConnectionLease.objects.all().delete()
        ServerState.objects.all().delete()
        MailServer.objects.all().delete()
    elif command == "setup":
        server = MailServer.objects.create(**argument["server"])
        for i in range(argument["messages"]):
            enqueue(
                from_address="app@example.com",
                to=[f"user{i}@example.org"],
                subject=f"message {i}",
                text="x" * argument.get("body_bytes", 100),
                server=server,
            )
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
