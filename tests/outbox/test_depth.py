"""A deep queue: the claim's statements read their few rows from outbox_server_due_idx in order,
however many messages wait (EXPLAIN on a database of its own with 100,000 messages).

`uv run python -m tests.bench.depth` is the full run (100,000 messages through a real worker).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.outbox.own_database import ROOT, own_database, process_env

pytestmark = pytest.mark.nodb

ROWS = 100_000
LIMIT = 200

# Fills the table in one statement (a third sent, a third queued, a third deferred, a hundred
# claimed by a worker whose claim expired, over two servers), gathers statistics, then prints the plan of each claim statement as the worker runs it.
EXPLAIN = """
import json, sys
import django
django.setup()
from django.db import connection, transaction
from django.utils import timezone
from mailgate.outbox.claims import claim_queries
from mailgate.servers.models import MailServer

rows, limit = int(sys.argv[1]), int(sys.argv[2])
servers = [
    MailServer.objects.create(name=f"s{n}", auth_method="password", smtp_host="127.0.0.1")
    for n in (1, 2)
]
postgres = connection.vendor == "postgresql"
numbers = (
    f"SELECT g FROM generate_series(1, {rows}) g" if postgres
    else f"WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < {rows}) SELECT g FROM n"
)
status = (
    "CASE WHEN g % 1000 = 0 THEN 'sending' WHEN g % 3 = 0 THEN 'sent' WHEN g % 3 = 1 "
    "THEN 'queued' ELSE 'deferred' END"
)
when = (
    "now() - make_interval(secs => g)" if postgres
    else "strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || g || ' seconds')"
)
raw = "convert_to('x', 'UTF8')" if postgres else "x'78'"
with connection.cursor() as cursor:
    cursor.execute(
        'INSERT INTO outbox_outgoingmessage (server_id, status, source, submitted_by, '
        'from_address, "to", cc, bcc, reply_to, subject, message_id, raw, size, '
        "recipients_count, attempts, retries, next_attempt_at, claimed_by, claimed_until, "
        "last_error, last_reply, diagnosis, queue_id, route_reason, created_at, updated_at) "
        f"SELECT CASE WHEN g % 10 = 1 THEN {servers[1].pk} ELSE {servers[0].pk} END, {status}, "
        "'python', '', 'a@example.com', '[]', '[]', '[]', '', 's', '<' || g || '@x>', "
        f"{raw}, 1, 1, 0, 0, {when}, '', {when}, '', '', '', '', '', {when}, {when} "
        f"FROM ({numbers}) AS numbers"
    )  # no parameters: the % signs are SQL
    cursor.execute("ANALYZE")
plans = []
with transaction.atomic():
    for query in claim_queries(servers[0].pk, timezone.now(), limit):
        plans.append(query.explain(analyze=True) if postgres else query.explain())
print(json.dumps(plans))
"""


@pytest.fixture(params=["postgresql", "sqlite"])
def plans(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    with own_database(request.param, tmp_path, "mg_outbox_depth") as url:
        env = process_env(url, tmp_path, DJANGO_SETTINGS_MODULE="mailgate.settings")
        for command in (
            [sys.executable, "-m", "tests.outbox.harness", "migrate", "{}"],
            [sys.executable, "-c", EXPLAIN, str(ROWS), str(LIMIT)],
        ):
            done = subprocess.run(
                command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, done.stderr[-3000:]
        yield request.param, json.loads(done.stdout.strip().splitlines()[-1])


def test_each_claim_statement_reads_only_its_rows_from_the_server_due_index(
    plans: tuple[str, list[str]],
) -> None:
    kind, found = plans
    assert len(found) == 3  # queued, deferred, and sending with an expired claim
    for plan in found:
        if kind == "sqlite":
            # EXPLAIN QUERY PLAN: one search of the index, in its order (no temp B-tree for it).
            assert "USING INDEX outbox_server_due_idx (server_id=? AND status=?" in plan, plan
            assert "SCAN " not in plan, plan
            continue
        assert "using outbox_server_due_idx on outbox_outgoingmessage" in plan, plan
        assert "Seq Scan" not in plan and "Bitmap" not in plan, plan
        # The waiting ones come in next_attempt_at order from the index (only ties sorted by id);
        # "sending" rows are only the claimed batches, sorted whole, never the queue.
        scanned = re.search(
            r"Index (?:Only )?Scan using outbox_server_due_idx.*rows=(\d+) loops", plan
        )
        assert scanned is not None, plan
        # About LIMIT rows read (plus the ties of the last next_attempt_at), of ~33,000 due.
        assert int(scanned.group(1)) <= 2 * LIMIT, plan
