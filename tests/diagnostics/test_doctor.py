"""`mailgate doctor [--json]`: findings as lines, a table or JSON; exit 0 / 1 / 2."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError

from mailgate.core.heartbeat import Heartbeat
from mailgate.outbox.models import OutgoingMessage
from mailgate.servers.models import MailServer, ServerStatus

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
PASSWORD = "pw-plaintext-4711"


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def frozen() -> Iterator[None]:
    with time_machine.travel(T0, tick=False):
        yield


@pytest.fixture
def healthy(db: None, frozen: None) -> MailServer:
    Heartbeat(holder="mx1:7").beat(now=T0)
    return MailServer.objects.create(
        name="Sales",
        username="sales@example.com",
        password=PASSWORD,
        smtp_host="127.0.0.1",
        status=ServerStatus.READY,
        last_test_at=T0,
        last_test_ok=True,
    )


def doctor(*args: str, stdout: io.StringIO | None = None) -> tuple[str, int]:
    out = stdout or io.StringIO()
    try:
        call_command("doctor", *args, stdout=out, stderr=io.StringIO())
    except CommandError as exc:
        return out.getvalue(), exc.returncode
    return out.getvalue(), 0


def test_it_exits_0_and_says_so_when_nothing_needs_action(healthy: MailServer) -> None:
    out, code = doctor()
    assert code == 0
    assert out.splitlines()[0] == "System"
    assert "  ok       1 worker running — Seen in the last 5 minutes: " in out
    assert 'Server "Sales" (Username and Password, Ready): queued 0, deferred 0, held 0' in out
    assert "  ok       Connection test succeeded — 2026-03-02 09:00 UTC" in out
    assert out.rstrip().endswith("Nothing needs action.")


def test_it_exits_1_with_each_problem_and_its_fix(healthy: MailServer) -> None:
    MailServer.objects.filter(pk=healthy.pk).update(hold_reason="The server refused the login.")
    out, code = doctor()
    assert code == 1
    assert "  ERROR    Outgoing queue held (0 messages)\n" in out
    assert "           Held: The server refused the login.\n" in out
    assert "           Fix: A passing Test Connection" in out
    assert "Nothing needs action" not in out


def test_the_exit_message_counts_errors_and_warnings(healthy: MailServer) -> None:
    MailServer.objects.filter(pk=healthy.pk).update(active=False)
    OutgoingMessage.objects.create(server=healthy, from_address="a@example.com", raw=b"x")
    with pytest.raises(CommandError) as caught:
        call_command("doctor", stdout=io.StringIO())
    assert caught.value.returncode == 1
    assert str(caught.value) == "1 warning needs action (see each Fix)."


def test_json_lists_system_and_server_findings_with_queue_counts(healthy: MailServer) -> None:
    out, code = doctor("--json")
    assert code == 0
    document = json.loads(out)
    assert document["needs_action"] is False
    assert document["counts"]["error"] == document["counts"]["warning"] == 0
    assert {f["check"] for f in document["system"]} >= {"database", "migrations", "worker"}
    (server,) = document["servers"]
    assert server["name"] == "Sales" and server["status"] == "ready" and server["level"] == "ok"
    assert server["queue"] == {
        "queued": 0,
        "sending": 0,
        "deferred": 0,
        "held": 0,
        "failed_24h": 0,
        "sent_24h": 0,
    }
    assert set(server["findings"][0]) == {
        "level",
        "check",
        "title",
        "detail",
        "fix",
        "fix_url",
        "fix_command",
    }


def test_json_stays_parseable_when_something_needs_action(db: None, frozen: None) -> None:
    MailServer.objects.create(name="Support", auth_method="gmail", client_secret="secret-0815")
    out, code = doctor("--json")
    assert code == 1
    document = json.loads(out)
    assert document["needs_action"] is True
    checks = {f["check"]: f for f in document["servers"][0]["findings"]}
    assert checks["not_connected"]["level"] == "error"
    assert {f["check"]: f["level"] for f in document["system"]}["worker"] == "warning"
    assert "secret-0815" not in out


def test_a_terminal_gets_a_table(healthy: MailServer) -> None:
    out, code = doctor(stdout=TTY())
    assert code == 0
    assert "Where" in out and "Finding" in out and "Fix" in out
    assert "Connection test succeeded" in out and "Sales" in out


@pytest.mark.nodb
def test_a_bad_flag_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    from mailgate.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["doctor", "--jsn"])
    assert caught.value.code == 2
    assert "unrecognized arguments: --jsn" in capsys.readouterr().err


# -- as a real process against a database of its own ----------------------------------------


def run_cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "MAILGATE_DATABASE_URL"}
    environ.update(MAILGATE_HOME=str(home), **env)
    return subprocess.run(
        [sys.executable, "-m", "mailgate.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.nodb
def test_a_fresh_home_needs_migrations_and_then_a_worker_run_is_enough(tmp_path: Path) -> None:
    first = run_cli(tmp_path, "doctor")
    assert first.returncode == 1, first.stderr
    assert "database migrations not applied" in first.stdout
    assert "Fix: Run `mailgate migrate`" in first.stdout
    assert "could not run" not in first.stdout
    assert "CommandError: 1 error needs action (see each Fix)." in first.stderr

    assert run_cli(tmp_path, "migrate", "-v0").returncode == 0
    assert run_cli(tmp_path, "worker", "--once").returncode == 0
    third = run_cli(tmp_path, "doctor")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "1 worker running" in third.stdout
    assert "Nothing needs action." in third.stdout


@pytest.mark.nodb
def test_an_unreachable_database_exits_1_with_the_setting_to_check(tmp_path: Path) -> None:
    # A bound socket that never listens: connections to it are refused, and no one else gets it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        result = run_cli(
            tmp_path,
            "doctor",
            "--json",
            MAILGATE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/mailgate",
        )
    assert result.returncode == 1, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    (finding,) = document["system"]
    assert finding["check"] == "database" and finding["level"] == "error"
    assert finding["title"] == "Database unreachable"
    assert "MAILGATE_DATABASE_URL" in finding["fix"]
    assert document["servers"] == []
