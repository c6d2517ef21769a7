"""Benchmark helpers run in their own processes against a throw-away database.

Each feeding command prints one JSON line: {"started", "finished", "cpu"} (epoch seconds, and the
process's CPU seconds while feeding).
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def body_text(body_bytes: int) -> str:
    return ("0123456789abcdef" * 4 + "\n") * (body_bytes // 65)


def timed(feed: Callable[[], None]) -> None:
    started, cpu = time.time(), time.process_time()
    feed()
    finished = time.time()
    print(json.dumps({"started": started, "finished": finished, "cpu": time.process_time() - cpu}))


def post_over_http(argument: dict[str, Any]) -> None:
    """POST /api/v1/messages one by one from `threads` keep-alive connections, or
    /api/v1/messages/batch with `batch` messages per request from one connection."""
    host, _, port = argument["address"].rpartition(":")
    count, threads, batch = argument["count"], argument.get("threads", 1), argument.get("batch", 0)
    body = body_text(argument["body_bytes"])
    headers = {"Authorization": f"Bearer {argument['key']}", "Content-Type": "application/json"}

    def message(i: int) -> dict[str, Any]:
        return {
            "from": argument["from"],
            "to": [f"bench{i}@example.org"],
            "subject": f"bench {i}",
            "text": body,
        }

    def send(connection: http.client.HTTPConnection, path: str, payload: object) -> None:
        connection.request("POST", path, json.dumps(payload), headers)
        response = connection.getresponse()
        answer = response.read()
        if response.status not in (200, 201):
            raise SystemExit(f"bench: POST {path} answered {response.status}: {answer[:500]!r}")
        if batch and json.loads(answer)["refused"]:
            raise SystemExit(f"bench: POST {path} refused messages: {answer[:500]!r}")

    def run(numbers: range) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            if batch:
                for start in range(numbers.start, numbers.stop, batch):
                    items = [message(i) for i in range(start, min(start + batch, numbers.stop))]
                    send(connection, "/api/v1/messages/batch", {"messages": items})
            else:
                for i in numbers:
                    send(connection, "/api/v1/messages", message(i))
        finally:
            connection.close()

    def feed() -> None:
        share = -(-count // threads)
        parts = [range(n * share, min(count, (n + 1) * share)) for n in range(threads)]
        failures: list[BaseException] = []

        def guarded(numbers: range) -> None:
            try:
                run(numbers)
            except BaseException as exc:  # reported below, from the main thread
                failures.append(exc)

        workers = [threading.Thread(target=guarded, args=(part,)) for part in parts]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if failures:
            raise failures[0]

    timed(feed)


def send_over_smtp(argument: dict[str, Any]) -> None:
    """An application with an "outgoing mail server" setting: smtplib to the SMTP relay over one
    connection (STARTTLS trusting the relay's certificate, AUTH with the API key's name and key),
    one sendmail per message. The messages are those of the raw loop (built by mailgate's compose,
    which needs no Django), built before the clock starts as for the raw loop."""
    import smtplib
    import ssl

    from mailgate.outbox.compose import MessageSpec, build

    host, _, port = argument["address"].rpartition(":")
    body = body_text(argument["body_bytes"])
    messages = []
    for i in range(argument["count"]):
        spec = MessageSpec(
            from_address=argument["from"],
            to=[f"bench{i}@example.org"],
            subject=f"bench {i}",
            text=body,
        )
        messages.append((f"bench{i}@example.org", build(spec).raw))
    context = ssl.create_default_context(cafile=argument["ca_file"])

    def feed() -> None:
        with smtplib.SMTP(host, int(port), timeout=60) as smtp:
            smtp.starttls(context=context)
            smtp.login(argument["username"], argument["key"])
            for recipient, data in messages:
                smtp.sendmail(argument["from"], [recipient], data)

    timed(feed)


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailgate.settings")
    command, argument = sys.argv[1], json.loads(sys.argv[2])
    if command == "post":  # an HTTP client only: no Django
        post_over_http(argument)
        return
    if command == "smtp":  # an SMTP client only: no Django
        send_over_smtp(argument)
        return
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction
    from django.utils import timezone

    from mailgate.oauth.models import Grant
    from mailgate.outbox.submit import enqueue
    from mailgate.servers.models import MailServer

    if command == "setup":
        call_command("migrate", interactive=False, verbosity=0)
        call_command("createcachetable", verbosity=0)
        # Connected, as the account's sign-in leaves it (Token Valid).
        server = MailServer.objects.create(**argument["server"], status="token_valid")
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
        if argument.get("api_key"):
            from mailgate.api.models import APIKey

            print(json.dumps({"api_key": APIKey.issue("bench")[1]}))
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
        profile_to = os.environ.get("MAILGATE_BENCH_PROFILE")
        if profile_to:  # cProfile of the fetch alone, for finding where its time goes
            import cProfile

            profiler = cProfile.Profile()
            report = profiler.runcall(fetch_server, server)
            profiler.dump_stats(profile_to)
        else:
            report = fetch_server(server)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu
        # What the fetch leaves to the hand-off: parsing the header fields, timed on its own.
        from mailgate.inbox.store import parse_pending

        parse_started = time.perf_counter()
        parsed = parse_pending()
        parse_seconds = time.perf_counter() - parse_started
        print(
            json.dumps(
                {
                    "seconds": seconds,
                    "cpu": cpu_seconds,
                    "parsed": parsed,
                    "parse_seconds": parse_seconds,
                    "error": report.error,
                    "stored": report.total,
                    "rows": IncomingMessage.objects.count(),
                    "rss_before_kb": before,
                    "peak_rss_kb": peak_kb(),
                }
            )
        )
    elif command == "enqueue":
        body = body_text(argument["body_bytes"])
        per_transaction = int(argument.get("per_transaction", 100))

        def feed() -> None:
            for start in range(0, argument["count"], per_transaction):
                with transaction.atomic():
                    for i in range(start, min(start + per_transaction, argument["count"])):
                        enqueue(
                            from_address=argument["from"],
                            to=[f"bench{i}@example.org"],
                            subject=f"bench {i}",
                            text=body,
                        )

        timed(feed)
    elif command == "backend":
        # An application sending with Django's send_mail API through mailgate's email backend,
        # one message per call (each its own transaction), as a web request would.
        from django.core.mail import EmailMessage, get_connection

        body = body_text(argument["body_bytes"])
        connection = get_connection("mailgate.outbox.backends.EmailBackend")

        def feed() -> None:
            for i in range(argument["count"]):
                mail = EmailMessage(f"bench {i}", body, argument["from"], [f"bench{i}@example.org"])
                connection.send_messages([mail])

        timed(feed)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
