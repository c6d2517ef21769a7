"""Benchmark helpers run in their own processes against a throw-away database."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailgate.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction
    from django.utils import timezone

    from mailgate.oauth.models import Grant
    from mailgate.outbox.submit import enqueue
    from mailgate.servers.models import MailServer

    command, argument = sys.argv[1], json.loads(sys.argv[2])
    if command == "setup":
        call_command("migrate", interactive=False, verbosity=0)
        server = MailServer.objects.create(**argument["server"])
        Grant.objects.create(
            server=server,
            provider="microsoft",
            account=server.username,
            client_id=server.client_id,
            scopes="offline_access openid https://outlook.office.com/SMTP.Send",
            refresh_token=argument["refresh_token"],
            access_token=argument["access_token"],
            access_expires_at=timezone.now() + dt.timedelta(seconds=argument["expires_in"]),
            last_success_at=timezone.now(),
        )
    elif command == "fetch":
        # Fetch once (after Django is up, like the raw loop after its imports) and report the
        # time, what was stored and this process's peak RSS.
        from pathlib import Path

        from mailgate.inbox.fetcher import fetch_server
        from mailgate.inbox.models import IncomingMessage

        server = MailServer.objects.get(name=argument["server"])

        def peak_kb() -> int:
            # VmHWM belongs to this program's image (ru_maxrss would carry the parent's peak
            # across fork + exec).
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
            return 0

        before = peak_kb()
        started, cpu = time.perf_counter(), time.process_time()
        report = fetch_server(server)
        seconds = time.perf_counter() - started
        print(
            json.dumps(
                {
                    "seconds": seconds,
                    "cpu": time.process_time() - cpu,
                    "error": report.error,
                    "stored": report.total,
                    "rows": IncomingMessage.objects.count(),
                    "rss_before_kb": before,
                    "peak_rss_kb": peak_kb(),
                }
            )
        )
    elif command == "enqueue":
        body = ("0123456789abcdef" * 4 + "\n") * (argument["body_bytes"] // 65)
        started, cpu = time.time(), time.process_time()
        per_transaction = int(argument.get("per_transaction", 100))
        for start in range(0, argument["count"], per_transaction):
            with transaction.atomic():
                for i in range(start, min(start + per_transaction, argument["count"])):
                    enqueue(
                        from_address=argument["from"],
                        to=[f"bench{i}@example.org"],
                        subject=f"bench {i}",
                        text=body,
                    )
        finished = time.time()
        print(
            json.dumps({"started": started, "finished": finished, "cpu": time.process_time() - cpu})
        )
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
