"""What operators deploy: the systemd units verify, and `mailgate backup` copies a live SQLite database."""

from __future__ import annotations

import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from tests.outbox.own_database import ROOT
from tests.processes import mailgate

pytestmark = pytest.mark.nodb

UNITS = sorted((ROOT / "deploy").glob("*.service"))


def test_there_are_units_for_web_worker_and_relay() -> None:
    assert [unit.name for unit in UNITS] == [
        "mailgate-relay.service",
        "mailgate-web.service",
        "mailgate-worker.service",
    ]


def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: make test-deps installs systemd"
    # The units name /opt/mailgate (the README's layout): point them at this checkout's virtualenv.
    for unit in UNITS:
        text = unit.read_text().replace("/opt/mailgate", str(ROOT))
        (tmp_path / unit.name).write_text(text.replace("/var/lib/mailgate", str(tmp_path)))
    assert (ROOT / ".venv/bin/mailgate").exists()
    done = subprocess.run(
        [analyze, "verify", *[str(tmp_path / unit.name) for unit in UNITS]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_backup_copies_the_database_consistently_and_privately(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert mailgate(home, "migrate", "--verbosity", "0").returncode == 0
    target = tmp_path / "copy.sqlite3"
    done = mailgate(home, "backup", str(target))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with sqlite3.connect(target) as copy:
        tables = {row[0] for row in copy.execute("SELECT name FROM sqlite_master")}
    assert "servers_mailserver" in tables and "outbox_outgoingmessage" in tables
    again = mailgate(home, "backup", str(target))
    assert again.returncode != 0 and "exists" in again.stderr
