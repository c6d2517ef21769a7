"""Every system finding that needs action carries where to fix it: a console page (fix_url) or the
command to run (fix_command), like the per-server findings link to the server's page. The
dashboard shows them beside "Fix:", and `mailgate doctor` prints them (and --json has them)."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from mailgate.diagnostics import health
from mailgate.diagnostics.health import Finding, Level, system_findings
from mailgate.outbox.models import OutgoingMessage
from mailgate.servers.forms import ORIGIN_CACHE_KEY
from mailgate.servers.models import MailServer

pytestmark = pytest.mark.django_db

DiskUsage = namedtuple("DiskUsage", "total used free")
GB = 1024**3


def by_check(findings: list[Finding], check: str) -> Finding:
    (found,) = [f for f in findings if f.check == check and f.needs_action]
    return found


def make_server(**fields: Any) -> MailServer:
    values: dict[str, Any] = {
        "name": "Sales",
        "auth_method": "password",
        "username": "sales@example.com",
        "password": "pw",
        "smtp_host": "127.0.0.1",
        "smtp_port": 2525,
        **fields,
    }
    return MailServer.objects.create(**values)


@pytest.fixture
def broken(settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Finding]:
    """A deployment with every system problem that can be made in one database at once: no
    worker with mail waiting, a plain-http public URL opened at another address, another identity
    endpoint, a secret under an older key, and a full disk."""
    settings.MAILGATE_HOME = tmp_path
    settings.MAILGATE_PUBLIC_URL = "http://mail.example.com:8000"
    settings.CONFIG = dataclasses.replace(settings.CONFIG, public_url_explicit=True)
    cache.clear()
    cache.set(ORIGIN_CACHE_KEY, "http://127.0.0.1:18080")  # the console was opened there
    old, new = Fernet.generate_key(), Fernet.generate_key()
    settings.MAILGATE_ENCRYPTION_KEYS = [old]
    server = make_server()
    OutgoingMessage.objects.create(server=server, from_address="a@example.com", raw=b"x")
    settings.MAILGATE_ENCRYPTION_KEYS = [new, old]
    settings.MAILGATE_MICROSOFT_LOGIN_URL = "https://login.proxy.example"
    real = shutil.disk_usage
    monkeypatch.setattr(
        health.shutil,
        "disk_usage",
        lambda path: (
            DiskUsage(100 * GB, 100 * GB - 10_000_000, 10_000_000)
            if Path(path) == tmp_path
            else real(path)
        ),
    )
    return system_findings()


def test_every_system_problem_says_where_or_how_to_fix_it(broken: list[Finding]) -> None:
    problems = {f.check: f for f in broken if f.needs_action}
    assert set(problems) >= {
        "worker",
        "public_url",
        "public_url_origin",
        "identity_endpoints",
        "encryption_keys",
        "disk",
    }
    assert [c for c, f in problems.items() if not (f.fixable and f.fix)] == []
    assert problems["worker"].fix_command == "mailgate worker"
    assert problems["public_url"].fix_command == (
        "export MAILGATE_PUBLIC_URL=https://mail.example.com:8000"
    )
    assert problems["public_url_origin"].fix_url == "http://mail.example.com:8000/"
    assert problems["identity_endpoints"].fix_command == "unset MAILGATE_MICROSOFT_LOGIN_URL"
    assert problems["encryption_keys"].fix_command == "mailgate rotate-keys"
    disk = problems["disk"]
    assert disk.level == Level.ERROR and "10.0 MB free of" in disk.detail
    on_sqlite = health.connections["default"].vendor == "sqlite"
    assert disk.fix_command == (
        "mailgate purge --older-than 7"
        if on_sqlite
        else f"du -sh {health.settings.MAILGATE_HOME}/*"
    )


def test_a_secret_no_key_reads_links_to_the_servers_where_it_is_typed_again(settings: Any) -> None:
    settings.MAILGATE_ENCRYPTION_KEYS = [Fernet.generate_key()]
    make_server()
    settings.MAILGATE_ENCRYPTION_KEYS = [Fernet.generate_key()]
    finding = by_check(system_findings(), "encryption_keys")
    assert finding.level == Level.ERROR
    assert finding.fix_url == "/settings/technical/mail-servers/"


def test_disk_space_is_a_warning_when_low_and_ok_otherwise(
    settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings.MAILGATE_HOME = tmp_path
    free = {"bytes": 50 * GB}
    monkeypatch.setattr(
        health.shutil, "disk_usage", lambda path: DiskUsage(100 * GB, 0, free["bytes"])
    )
    (ok,) = [f for f in system_findings() if f.check == "disk"]
    assert ok.level == Level.OK and ok.detail.startswith("53.7 GB free of 107.4 GB (50%)")
    free["bytes"] = 300 * 1024 * 1024  # under 500 MB and under 5 %
    assert by_check(system_findings(), "disk").level == Level.WARNING


def test_a_check_that_breaks_and_an_unreachable_database_name_a_command() -> None:
    def broken_check() -> list[Finding]:
        raise RuntimeError("no such table")

    (finding,) = health._guarded(broken_check)
    assert finding.fix_command == "mailgate migrate"
    postgres = {"ENGINE": "django.db.backends.postgresql", "HOST": "db.internal", "PORT": "6432"}
    assert health._database_check_command(postgres) == "pg_isready -h db.internal -p 6432"
    assert health._database_check_command({"ENGINE": "mailgate.dbsqlite"}) == "mailgate migrate"


def test_the_dashboard_shows_the_command_and_the_link(
    broken: list[Finding], admin_client: Client
) -> None:
    page = admin_client.get("/", HTTP_HOST="127.0.0.1:18080").content.decode()
    assert "Run: <code>mailgate worker</code>" in page
    assert "Run: <code>mailgate rotate-keys</code>" in page
    assert "Run: <code>export MAILGATE_PUBLIC_URL=https://mail.example.com:8000</code>" in page
    assert '<a class="fix-link" href="http://mail.example.com:8000/">Fix it now</a>' in page


def test_doctor_prints_the_command_and_the_page_and_json_has_them(broken: list[Finding]) -> None:
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("doctor", stdout=out)
    text = out.getvalue()
    assert "           Run: mailgate worker" in text
    assert "           Open: http://mail.example.com:8000/" in text
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("doctor", "--json", stdout=out)
    system = {f["check"]: f for f in json.loads(out.getvalue())["system"]}
    assert system["worker"]["fix_command"] == "mailgate worker"
    assert system["public_url_origin"]["fix_url"] == "http://mail.example.com:8000/"
    assert system["database"]["fix_command"] == "" and system["database"]["level"] == "ok"
