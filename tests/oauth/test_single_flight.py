"""Single-flight refresh: 8 processes needing a token at once cause exactly one token request.

Each run gets its own throw-away database (SQLite file / PostgreSQL database), migrated by a real
process, so that real processes share it; the sandbox counts the token requests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mailgate.sandbox.server import Sandbox
from tests.oauth.conftest import REDIRECT, Browser

pytestmark = pytest.mark.nodb

CALLERS = 8
PG = "postgresql://postgres@127.0.0.1:5432"


def run(code: str, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'race.sqlite3'}"
        return
    name = f"mg_oauth_race_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def race_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("race-sandbox"), dovecot=False, smtp=False) as sandbox:
        yield sandbox


def refresh_token_from_sign_in(sandbox: Sandbox) -> str:
    """A real refresh token of the demo user, through the sandbox's pages."""
    from mailgate.providers.http import AuthorizationRequest, CodeRedemption
    from mailgate.providers.microsoft import client

    demo = sandbox.demo
    scope = "offline_access openid https://outlook.office.com/SMTP.Send"
    verifier = "v" * 64
    request = AuthorizationRequest(
        demo["client_id"], REDIRECT, scope, "race", verifier, demo["user"]
    )
    url = client.authorize_url(sandbox.login_url, "contoso.example", request)
    browser = Browser(sandbox.ca_file)
    try:
        location = browser.sign_in(url, demo["user"], demo["password"])
    finally:
        browser.close()
    code = location.split("code=", 1)[1].split("&", 1)[0]
    os.environ["SSL_CERT_FILE"] = str(sandbox.ca_file)
    try:
        redemption = CodeRedemption(
            demo["client_id"], demo["client_secret"], code, verifier, REDIRECT
        )
        tokens = client.redeem_code(
            sandbox.login_url,
            "contoso.example",
            redemption,
            scope=scope,
        )
    finally:
        os.environ.pop("SSL_CERT_FILE", None)
    return tokens.refresh_token


def test_eight_processes_refresh_once(
    race_sandbox: Sandbox, database_url: str, tmp_path: Path
) -> None:
    demo = race_sandbox.demo
    env = {
        **os.environ,
        "MAILGATE_HOME": str(tmp_path / "home"),
        "MAILGATE_DATABASE_URL": database_url,
        "MAILGATE_MICROSOFT_LOGIN_URL": race_sandbox.login_url,
        "SSL_CERT_FILE": str(race_sandbox.ca_file),
        "DJANGO_SETTINGS_MODULE": "mailgate.settings",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    run(
        "import sys; from mailgate.cli import main; sys.argv=['mailgate','migrate','-v0']; main()",
        env,
    )
    refresh_token = refresh_token_from_sign_in(race_sandbox)
    seed = f"""
        import django, datetime as dt
        django.setup()
        from django.core.management import call_command
        call_command("migrate", "oauth", verbosity=0)
        from django.utils import timezone
        from mailgate.servers.models import MailServer
        from mailgate.oauth.models import Grant
        s = MailServer.objects.create(name="race", auth_method="outlook", username={demo["user"]!r},
            client_id={demo["client_id"]!r}, client_secret={demo["client_secret"]!r}, smtp_host="x")
        Grant.objects.create(server=s, provider="microsoft", account=s.username, client_id=s.client_id,
            scopes="offline_access openid https://outlook.office.com/SMTP.Send",
            refresh_token={refresh_token!r}, access_token="expired",
            access_expires_at=timezone.now() - dt.timedelta(minutes=1),
            last_success_at=timezone.now())
        print(s.pk)
    """
    server_id = int(run(seed, env).strip())
    go = tmp_path / "go"
    caller = f"""
        import django, pathlib, time
        django.setup()
        from mailgate.servers.models import MailServer
        from mailgate.oauth.tokens import get_fresh_access_token
        server = MailServer.objects.get(pk={server_id})
        pathlib.Path({str(tmp_path)!r}, "ready-" + str(__import__("os").getpid())).touch()
        deadline = time.monotonic() + 60
        while not pathlib.Path({str(go)!r}).exists():
            assert time.monotonic() < deadline, "no start signal"
            time.sleep(0.01)
        print(get_fresh_access_token(server))
    """
    race_sandbox.control.reset_counters()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(caller)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(CALLERS)
    ]
    try:
        deadline = time.monotonic() + 90
        while len(list(tmp_path.glob("ready-*"))) < CALLERS:
            assert time.monotonic() < deadline, "the callers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.02)
        go.touch()
        outputs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    tokens = {out.strip() for out, _ in outputs}
    assert len(tokens) == 1 and "expired" not in tokens
    assert race_sandbox.control.token_requests("refresh_token") == 1
    assert race_sandbox.control.token_requests() == 1
