"""Exit statuses are the same in every command: 2 for bad usage or input (as argparse exits for
an unknown option), 1 when the work itself failed."""

from __future__ import annotations

import io
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from tests.outbox.own_database import own_database, process_env
from tests.processes import MAILGATE, home_env, mailgate


def _returncode(*args: str, stdin: str = "") -> tuple[int, str]:
    """(the exit status a CommandError would give, its message), or (0, "") when none was raised."""
    with mock.patch("sys.stdin", io.StringIO(stdin)):
        try:
            call_command(*args, stdout=io.StringIO(), stderr=io.StringIO())
        except CommandError as exc:
            return exc.returncode, str(exc)
    return 0, ""


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("listen", "says"),
    [
        ("nonsense", "--listen: 'nonsense' is not host:port"),
        ("127.0.0.1:99999", "--listen: 99999 is out of range"),
        ("bad host!:25", "is not an address or host name"),
    ],
)
def test_relay_with_a_bad_listen_address_exits_2(listen: str, says: str) -> None:
    code, message = _returncode("relay", "--listen", listen)
    assert (code, says in message) == (2, True), message


@pytest.mark.django_db
def test_relay_without_a_listener_exits_2_naming_the_setting() -> None:
    with override_settings(MAILGATE_RELAY=None):
        code, message = _returncode("relay")
    assert code == 2
    assert "MAILGATE_SMTP_LISTEN is not set" in message and "--listen" in message


@pytest.mark.django_db
def test_relay_that_cannot_listen_exits_1(busy_port: int) -> None:
    code, message = _returncode("relay", "--listen", f"127.0.0.1:{busy_port}")
    assert code == 1
    assert "the SMTP relay cannot listen" in message


@pytest.mark.nodb
def test_backup_of_postgresql_exits_2_pointing_at_pg_dump(tmp_path: Path) -> None:
    """A real `mailgate backup` process on a real PostgreSQL database (created and migrated)."""
    with own_database("postgresql", tmp_path, "mg_backup_exit") as url:
        env = process_env(url, tmp_path / "home")
        migrated = subprocess.run(
            [*MAILGATE, "migrate"], env=env, capture_output=True, text=True, timeout=300
        )
        assert migrated.returncode == 0, migrated.stderr[-2000:]
        done = subprocess.run(
            [*MAILGATE, "backup", str(tmp_path / "copy.sqlite3")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pg_dump" in done.stderr
    assert not (tmp_path / "copy.sqlite3").exists()


@pytest.mark.nodb
def test_backup_to_a_bad_file_exits_2(tmp_path: Path) -> None:
    """A real `mailgate backup` process on its own SQLite database."""
    home = tmp_path / "home"
    assert mailgate(home, "migrate").returncode == 0
    taken = tmp_path / "taken.sqlite3"
    taken.write_bytes(b"keep me")
    exists = mailgate(home, "backup", str(taken))
    no_folder = mailgate(home, "backup", str(tmp_path / "missing" / "copy.sqlite3"))
    assert exists.returncode == 2 and "exists; choose a new name" in exists.stderr
    assert no_folder.returncode == 2 and "does not exist" in no_folder.stderr
    assert taken.read_bytes() == b"keep me"


@pytest.mark.django_db
def test_users_and_create_admin_without_a_password_on_stdin_exit_2() -> None:
    code, message = _returncode("users", "add", "new@example.com", "--password-stdin")
    assert (code, message) == (2, "--password-stdin: no password on standard input")
    code, message = _returncode("createadmin", "--email", "boss@example.com", "--password-stdin")
    assert (code, message) == (2, "--password-stdin: no password on standard input")


@pytest.mark.django_db
def test_create_admin_with_a_weak_password_exits_2() -> None:
    code, message = _returncode(
        "createadmin", "--email", "boss@example.com", "--password-stdin", stdin="1\n"
    )
    assert code == 2 and message.startswith("--password-stdin: "), message


@pytest.mark.nodb
def test_the_console_script_exits_2_for_bad_input_and_usage(tmp_path: Path) -> None:
    """End to end through `mailgate`: Django turns the CommandError into the process's status."""
    home = tmp_path / "home"
    assert mailgate(home, "migrate", "--verbosity", "0").returncode == 0
    taken = tmp_path / "taken"
    taken.write_text("x")
    results = {
        "backup FILE exists": mailgate(home, "backup", str(taken)),
        "relay --listen bad": mailgate(home, "relay", "--listen", "nowhere"),
        "relay, unknown option": mailgate(home, "relay", "--no-such-option"),
        "backup, no FILE": mailgate(home, "backup"),
    }
    codes = {what: done.returncode for what, done in results.items()}
    assert codes == dict.fromkeys(results, 2), {w: d.stderr[-300:] for w, d in results.items()}
    assert "Traceback" not in "".join(d.stderr for d in results.values())


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("variable", "value"),
    [("MAILGATE_INBOX_PACK_MIN", "abc"), ("MAILGATE_INBOX_BATCH", "0")],
)
def test_a_bad_inbox_tuning_variable_is_named_without_a_traceback(
    tmp_path: Path, variable: str, value: str
) -> None:
    home = tmp_path / "home"
    assert mailgate(home, "migrate").returncode == 0
    done = subprocess.run(
        [*MAILGATE, "fetch"],
        env={**home_env(home), variable: value},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert (
        f"configuration error: {variable}:" in done.stderr
        and "Expected a whole number" in done.stderr
    )
    assert "Traceback" not in done.stderr
