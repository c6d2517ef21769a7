"""A slow identity provider holds no database lock: enqueues and the worker's writes go on.

The sandbox's token endpoint answers after 20 s (longer than the 15 s HTTP timeout, so the refresh
takes two timeouts and a pause, about 30 s) while a real `mailgate worker` delivers mail that a
real application process enqueues one message at a time, on a SQLite file and on PostgreSQL.
Before the refresh was claimed by compare-and-swap, it held SQLite's write lock for all that time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.sandbox.server import Sandbox
from tests.oauth.test_single_flight import refresh_token_from_sign_in, run
from tests.outbox.own_database import ROOT, own_database, process_env, query
from tests.smtpsink import SMTPSink

pytestmark = pytest.mark.nodb

MESSAGES = 20


@pytest.fixture(scope="module")
def slow_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("slow-idp"), dovecot=False, smtp=False) as sandbox:
        yield sandbox


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_enqueues_and_outcome_writes_go_on_during_a_20_s_token_call(
    slow_sandbox: Sandbox, kind: str, tmp_path: Path
) -> None:
    with own_database(kind, tmp_path, "mg_slow_idp") as url, SMTPSink() as sink:
        env = {
            **process_env(url, tmp_path),
            "MAILGATE_MICROSOFT_LOGIN_URL": slow_sandbox.login_url,
            "SSL_CERT_FILE": str(slow_sandbox.ca_file),
            "DJANGO_SETTINGS_MODULE": "mailgate.settings",
        }
        run(
            "from mailgate.cli import main; import sys; sys.argv=['mailgate','migrate','-v0']; main()",
            env,
        )
        demo = slow_sandbox.demo
        refresh_token = refresh_token_from_sign_in(slow_sandbox)
        seed = f"""
            import django, datetime as dt
            django.setup()
            from django.utils import timezone
            from mailgate.servers.models import MailServer
            from mailgate.oauth.models import Grant
            s = MailServer.objects.create(name="slow idp", auth_method="outlook",
                username={demo["user"]!r}, client_id={demo["client_id"]!r},
                client_secret={demo["client_secret"]!r}, smtp_host="127.0.0.1")
            Grant.objects.create(server=s, provider="microsoft", account=s.username,
                client_id=s.client_id, scopes="offline_access https://outlook.office.com/SMTP.Send",
                refresh_token={refresh_token!r}, access_token="expired",
                access_expires_at=timezone.now() - dt.timedelta(minutes=1),
                last_success_at=timezone.now())
            MailServer.objects.create(name="sink", auth_method="password", smtp_host="127.0.0.1",
                smtp_port={sink.port}, smtp_security="none", limit_per_minute=100000)
            print(s.pk)
        """
        oauth_server = int(run(seed, env).strip())
        slow_sandbox.control.set_faults(delay=20)
        refresher = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
                    import django, time
                    django.setup()
                    from mailgate.oauth.tokens import refresh_access_token
                    from mailgate.providers.errors import TokenError
                    started = time.monotonic()
                    try:
                        refresh_access_token({oauth_server})
                    except TokenError as exc:
                        print("failed:", exc.code)
                    print("took", time.monotonic() - started)
                """),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "mailgate.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(2)  # the refresh is on its way to the slow token endpoint
            enqueuer = textwrap.dedent(f"""
                import django, json, time
                django.setup()
                from mailgate.outbox import enqueue
                from mailgate.servers.models import MailServer
                sink = MailServer.objects.get(name="sink")
                took = []
                for i in range({MESSAGES}):
                    started = time.monotonic()
                    enqueue(from_address="app@example.com", to=[f"u{{i}}@example.org"],
                            subject=str(i), text="x", server=sink)
                    took.append(time.monotonic() - started)
                    time.sleep(0.05)
                print(json.dumps(took))
            """)
            took = json.loads(run(enqueuer, env, timeout=60))
            deadline = time.monotonic() + 20
            while len(sink.received) < MESSAGES and time.monotonic() < deadline:
                time.sleep(0.1)
            sent = query(url, "SELECT COUNT(*) FROM outbox_outgoingmessage WHERE status = 'sent'")
            # All of it happened while the token call was still waiting on the identity provider.
            assert refresher.poll() is None, refresher.communicate()
            out, err = refresher.communicate(timeout=90)
        finally:
            for process in (refresher, worker):
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=30)
            slow_sandbox.control.clear_faults()
        assert max(took) < 2.0, took
        assert len(sink.received) == MESSAGES
        assert sent[0][0] == MESSAGES
        assert "took" in out, err[-2000:]
        assert float(out.split("took")[1]) >= 20
