"""`mailgate` is mailgate's own CLI: grouped help with hyphenated names, Django's development
commands hidden, and a clear message instead of a traceback when the schema is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nodb


def _mailgate(*args: str, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env["MAILGATE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "mailgate.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_mailgates_commands_by_purpose_with_hyphens(tmp_path: Path) -> None:
    shown = _mailgate("--help", home=tmp_path).stdout
    for group in ("Start:", "Mail:", "Configure:", "Operate:"):
        assert group in shown
    for name in ("demo", "sandbox", "run", "send", "servers", "users", "rotate-keys", "api-keys"):
        assert f"\n  {name} " in shown, name
    for hidden in ("runserver", "flush", "startproject", "sendtestemail", "rotate_keys"):
        assert hidden not in shown
    assert _mailgate(home=tmp_path).stdout == shown


def test_a_command_answers_to_its_hyphenated_name(tmp_path: Path) -> None:
    helped = _mailgate("rotate-keys", "--help", home=tmp_path)
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: mailgate rotate-keys")
    assert _mailgate("help", "rotate-keys", home=tmp_path).stdout == helped.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("send", "--from", "alex@contoso.example", "--to", "a@example.org", "--body", "hi"),
        ("servers", "list"),
        ("outbox", "list"),
        ("users", "list"),
    ],
)
def test_a_missing_database_is_named_with_the_fix_instead_of_a_traceback(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    home = tmp_path / "var"
    # The demo's folder next to it, as `make demo` leaves it.
    (tmp_path / "var" / "demo" / "mailgate-home").mkdir(parents=True)
    result = _mailgate(*args, home=home, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        f"mailgate {args[0]}: the SQLite database {home / 'mailgate.sqlite3'} does not exist "
        f"(MAILGATE_HOME={home})."
    ) in result.stderr
    assert (
        "Run `mailgate migrate`, or set MAILGATE_HOME to the demo's folder: "
        f"export MAILGATE_HOME={tmp_path / 'var' / 'demo' / 'mailgate-home'}."
    ) in result.stderr
    # Nothing was created on the way: no empty database to confuse the next run.
    assert not (home / "mailgate.sqlite3").exists()


def test_an_empty_database_is_named_too(tmp_path: Path) -> None:
    (tmp_path / "mailgate.sqlite3").touch()
    result = _mailgate("servers", "list", home=tmp_path)
    assert result.returncode == 2
    assert f"the SQLite database {tmp_path / 'mailgate.sqlite3'} has no mailgate tables" in (
        result.stderr
    )
    assert "Run `mailgate migrate`." in result.stderr


def test_the_sqlite_database_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    assert _mailgate("migrate", home=tmp_path).returncode == 0
    assert (tmp_path / "mailgate.sqlite3").stat().st_mode & 0o777 == 0o600
