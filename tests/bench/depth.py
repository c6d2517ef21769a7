"""`uv run python -m tests.bench.depth` (part of `make bench`): a deep queue on PostgreSQL.

100,000 messages (DEPTH_MESSAGES) of 2 KB (DEPTH_BODY_BYTES) are queued with enqueue(), 100 per
transaction, while no worker runs, timed per 2,000; then one `mailgate worker` drains them to an
aiosmtpd server on loopback (the server's Concurrent Connections: DEPTH_CONNECTIONS, 3 as a new
server has). Reported, each against its target:

- enqueue: the median rate of the last five chunks of 2,000 against the first five (the table grew
  from 0 to the full queue meanwhile; one chunk alone varies with the machine's other work), and
  the last 2,000 against the first 2,000;
- the claim's statements at full depth (EXPLAIN ANALYZE): the index each reads and how many rows;
- the worker's peak RSS (VmHWM, at most 150 MB), sampled RSS too;
- the drain rate of the last 2,000 messages against the first 2,000 (at least 95 %).

The machine is shared: `uptime`'s load is printed with the figures.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.run import ROOT, Database, cpu_seconds, env_int, peak_rss_kb

CHUNK = 2000
PER_TRANSACTION = 100
RSS_LIMIT_MB = 150
DRAIN_RATIO = 0.95
OUTBOX_INDEXES = ("outbox_server_due_idx", "outbox_due_idx")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def load() -> str:
    return " ".join(f"{n:.2f}" for n in os.getloadavg())


def rate(stamps: list[float]) -> float:
    """Messages per second over a run of delivery times (intervals between the first and last)."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def enqueue_all(server: Any, count: int, body_bytes: int) -> list[float]:
    """Queue `count` messages; the rate (msg/s) of each chunk of CHUNK."""
    from django.db import transaction

    from mailgate.outbox.submit import enqueue

    body = ("0123456789abcdef" * 4 + "\n") * (body_bytes // 65)
    rates = []
    for start in range(0, count, CHUNK):
        began = time.perf_counter()
        for first in range(start, min(start + CHUNK, count), PER_TRANSACTION):
            with transaction.atomic():
                for i in range(first, min(first + PER_TRANSACTION, count)):
                    enqueue(
                        from_address="app@example.com",
                        to=[f"depth{i}@example.org"],
                        subject=f"depth {i}",
                        text=body,
                        server=server,
                    )
        rates.append(min(CHUNK, count - start) / (time.perf_counter() - began))
    return rates


def claim_plans(server_id: int) -> list[dict[str, Any]]:
    """EXPLAIN ANALYZE of each statement a claim runs, at the queue's full depth."""
    from django.db import connection, transaction
    from django.utils import timezone

    from mailgate.outbox.claims import claim_queries

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    plans = []
    with transaction.atomic():
        for query in claim_queries(server_id, timezone.now(), 200):
            plan = query.explain(analyze=True)
            scan = re.search(
                r"(Index (?:Only )?Scan|Seq Scan)(?: using (\w+))? on .*rows=(\d+) loops", plan
            )
            took = re.search(r"Execution Time: ([\d.]+) ms", plan)
            plans.append(
                {
                    "scan": scan.group(1) if scan else "?",
                    "index": (scan.group(2) or "") if scan else "",
                    "rows_read": int(scan.group(3)) if scan else -1,
                    "ms": float(took.group(1)) if took else -1.0,
                    "plan": plan,
                }
            )
    return plans


def main() -> None:
    count = env_int("DEPTH_MESSAGES", 100_000, minimum=2 * CHUNK)
    body_bytes = env_int("DEPTH_BODY_BYTES", 2000, minimum=65)
    connections = env_int("DEPTH_CONNECTIONS", 3)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    folder = Path(tempfile.mkdtemp(prefix="mailgate-depth-"))
    database = Database("postgresql", folder)
    worker: subprocess.Popen[bytes] | None = None
    from tests.smtpsink import SMTPSink

    stamps: list[float] = []
    sink = SMTPSink(keep_data=False, pipelining=True, chunking="yes")
    sink.data_reply = lambda envelope: stamps.append(time.monotonic()) and None
    try:
        env = {
            **os.environ,
            "MAILGATE_DATABASE_URL": database.url,
            "MAILGATE_HOME": str(folder / "home"),
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "mailgate.settings",
        }
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        from mailgate.servers.models import MailServer

        call_command("migrate", interactive=False, verbosity=0)
        sink.start()
        server = MailServer.objects.create(
            name="depth",
            auth_method="password",
            smtp_host="127.0.0.1",
            smtp_port=sink.port,
            smtp_security="none",
            limit_connections=connections,
        )
        print(f"depth: queueing {count} messages of {body_bytes} bytes (load {load()})", flush=True)
        began = time.perf_counter()
        enqueue_rates = enqueue_all(server, count, body_bytes)
        enqueue_seconds = time.perf_counter() - began
        plans = claim_plans(server.pk)
        connection.close()
        print(f"depth: queued in {enqueue_seconds:.0f} s; draining (load {load()})", flush=True)
        worker = subprocess.Popen(
            [sys.executable, "-m", "mailgate.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        rss_samples: list[tuple[int, int]] = []  # (delivered, RSS KiB)
        deadline = time.monotonic() + 3600
        while len(stamps) < count:
            if worker.poll() is not None:
                raise SystemExit(f"depth: the worker exited with status {worker.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"depth: {len(stamps)} of {count} delivered after an hour")
            rss_samples.append((len(stamps), rss_kb(worker.pid)))
            time.sleep(0.5)
        drained_load = load()
        peak_mb = peak_rss_kb(worker.pid) / 1024
        worker_cpu = cpu_seconds(worker.pid)
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        sink.stop()
        from django.db import connections as all_connections

        all_connections.close_all()
        database.drop()
    duplicates = len(stamps) - count
    first, last = rate(stamps[:CHUNK]), rate(stamps[-CHUNK:])
    enqueue_first = sorted(enqueue_rates[:5])[len(enqueue_rates[:5]) // 2]
    enqueue_last = sorted(enqueue_rates[-5:])[len(enqueue_rates[-5:]) // 2]
    results = {
        "messages": count,
        "body_bytes": body_bytes,
        "connections": connections,
        "enqueue": {
            "seconds": enqueue_seconds,
            "first_2000_per_second": enqueue_rates[0],
            "last_2000_per_second": enqueue_rates[-1],
            "ratio_last_to_first": enqueue_rates[-1] / enqueue_rates[0],
            "median_first_5_chunks": enqueue_first,
            "median_last_5_chunks": enqueue_last,
            "median_ratio": enqueue_last / enqueue_first,
        },
        "claim_statements": [{k: v for k, v in p.items() if k != "plan"} for p in plans],
        "drain": {
            "seconds": stamps[-1] - stamps[0],
            "per_second": rate(stamps),
            "first_2000_per_second": first,
            "last_2000_per_second": last,
            "ratio_last_to_first": last / first,
            "duplicates": duplicates,
            "worker_cpu_ms_per_message": worker_cpu / count * 1000,
        },
        "worker_peak_rss_mb": peak_mb,
        "worker_rss_mb_samples": [
            (delivered, kib / 1024)
            for delivered, kib in rss_samples[:: max(1, len(rss_samples) // 20)]
        ],
        "load_average_after_drain": drained_load,
    }
    print(json.dumps(results, indent=2))
    checks = [
        (
            "drain rate of the last 2,000 >= 95 % of the first 2,000",
            last / first >= DRAIN_RATIO,
            f"{last:.0f} vs {first:.0f} msg/s = {last / first:.2f}",
        ),
        (
            f"worker peak RSS <= {RSS_LIMIT_MB} MB",
            peak_mb <= RSS_LIMIT_MB,
            f"{peak_mb:.0f} MB",
        ),
        (
            "enqueue rate does not fall as the table grows (median of the last five chunks of "
            "2,000 against the first five)",
            enqueue_last / enqueue_first >= DRAIN_RATIO,
            f"{enqueue_last:.0f} vs {enqueue_first:.0f} msg/s = {enqueue_last / enqueue_first:.2f} "
            f"(last 2,000 alone against the first: {enqueue_rates[-1]:.0f} vs "
            f"{enqueue_rates[0]:.0f} = {enqueue_rates[-1] / enqueue_rates[0]:.2f})",
        ),
        (
            "each claim statement reads an outbox index in order, at most 400 rows (with one "
            "server PostgreSQL may take outbox_due_idx, as selective then)",
            all(p["index"] in OUTBOX_INDEXES and p["rows_read"] <= 400 for p in plans),
            ", ".join(
                f"{p['scan']} {p['index']} {p['rows_read']} rows {p['ms']:.2f} ms" for p in plans
            ),
        ),
        ("no message delivered twice", duplicates == 0, f"{duplicates} extra deliveries"),
    ]
    print(f"\ndepth: {count} messages, 1 worker, {connections} connections, load {drained_load}")
    for what, ok, figure in checks:
        print(f"  {'met    ' if ok else 'NOT MET'}  {what}: {figure}")


if __name__ == "__main__":
    main()
