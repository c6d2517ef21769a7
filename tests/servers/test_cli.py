"""`mailgate servers list | add | export | import`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from mailgate.servers.models import MailServer
from tests.servers.conftest import CLIENT_ID, CLIENT_SECRET, make_certificate

OUTLOOK_FLAGS = [
    "--name",
    "Sales",
    "--auth",
    "outlook",
    "--username",
    "sales@contoso.com",
    "--client-id",
    CLIENT_ID,
    "--client-secret-stdin",
]


def run(
    *args: str, stdin: str = "", monkeypatch: pytest.MonkeyPatch | None = None
) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    if monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    call_command("servers", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def bad(*args: str, stdin: str = "", monkeypatch: pytest.MonkeyPatch | None = None) -> str:
    with pytest.raises(CommandError) as info:
        run(*args, stdin=stdin, monkeypatch=monkeypatch)
    assert info.value.returncode == 2
    return str(info.value)


def test_add_reads_the_client_secret_from_stdin(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = run(
        "add",
        *OUTLOOK_FLAGS,
        "--incoming",
        "imap",
        stdin=CLIENT_SECRET + "\n",
        monkeypatch=monkeypatch,
    )
    assert "added" in out and "http://127.0.0.1:8000/oauth/microsoft/callback" in out
    server = MailServer.objects.get()
    assert server.client_secret.reveal() == CLIENT_SECRET  # type: ignore[union-attr]
    assert (server.smtp_host, server.incoming_host, server.limit_per_minute) == (
        "smtp.office365.com",
        "outlook.office365.com",
        30,
    )
    assert CLIENT_SECRET not in out


def test_add_takes_every_form_field_as_a_flag(db: None, tmp_path: Path) -> None:
    secret = tmp_path / "password.txt"
    secret.write_text("relay-password\n")
    run(
        "add",
        "--name",
        "Relay",
        "--auth",
        "password",
        "--username",
        "relay@example.com",
        "--password-file",
        str(secret),
        "--smtp-host",
        "smtp.example.com",
        "--smtp-port",
        "465",
        "--security",
        "ssl",
        "--from-filter",
        "example.com",
        "--send-as",
        "info@example.com",
        "--priority",
        "3",
        "--inactive",
        "--incoming",
        "imap",
        "--incoming-host",
        "imap.example.com",
        "--incoming-port",
        "1993",
        "--incoming-security",
        "ssl",
        "--folder",
        "Orders",
        "--folder",
        "Invoices",
        "--poll-interval",
        "300",
        "--fetch-existing",
        "--after-fetch",
        "move",
        "--move-to-folder",
        "Done",
        "--limit-per-minute",
        "5",
        "--limit-recipients-per-day",
        "100",
        "--limit-connections",
        "1",
        "--max-message-bytes",
        "1000",
    )
    s = MailServer.objects.get()
    assert s.password.reveal() == "relay-password"  # type: ignore[union-attr]
    assert (s.smtp_port, s.smtp_security, s.from_filter, s.send_as, s.priority, s.active) == (
        465,
        "ssl",
        "example.com",
        "info@example.com",
        3,
        False,
    )
    assert (s.incoming_port, s.folder_list(), s.after_fetch, s.move_to_folder) == (
        1993,
        ["Orders", "Invoices"],
        "move",
        "Done",
    )
    assert (s.poll_interval, s.fetch_existing) == (300, True)
    assert (
        s.limit_per_minute,
        s.limit_recipients_per_day,
        s.limit_connections,
        s.max_message_bytes,
    ) == (5, 100, 1, 1000)


def test_add_reads_a_certificate_and_key_from_files(db: None, tmp_path: Path) -> None:
    cert, key = make_certificate()
    (tmp_path / "c.pem").write_text(cert)
    (tmp_path / "k.pem").write_text(key)
    run(
        "add",
        "--name",
        "Cert",
        "--auth",
        "certificate",
        "--smtp-host",
        "smtp.example.com",
        "--certificate-file",
        str(tmp_path / "c.pem"),
        "--private-key-file",
        str(tmp_path / "k.pem"),
    )
    assert MailServer.objects.get().private_key.reveal().strip() == key.strip()  # type: ignore[union-attr]


@pytest.mark.parametrize("flag", ["--client-secret", "--password", "--private-key"])
def test_secrets_on_the_command_line_are_refused_without_echoing_them(db: None, flag: str) -> None:
    for args in ([flag, "hunter2-value"], [f"{flag}=hunter2-value"]):
        message = bad("add", "--name", "X", "--auth", "outlook", *args)
        assert "not accepted on the command line" in message and "hunter2" not in message
    assert not MailServer.objects.exists()


def test_add_reports_each_problem_with_its_flag(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    message = bad(
        "add",
        "--name",
        "X",
        "--auth",
        "outlook",
        "--username",
        "sales",
        "--client-id",
        "abc",
        "--smtp-port",
        "70000",
        "--from-filter",
        "bad@@x",
        "--client-secret-stdin",
        stdin=CLIENT_SECRET,
        monkeypatch=monkeypatch,
    )
    for flag in ("--username:", "--client-id:", "--smtp-port:", "--from-filter:"):
        assert flag in message
    assert CLIENT_SECRET not in message
    assert not MailServer.objects.exists()


def test_add_refuses_an_existing_name_and_empty_stdin(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("add", *OUTLOOK_FLAGS, stdin=CLIENT_SECRET, monkeypatch=monkeypatch)
    assert "exists already" in bad(
        "add", *OUTLOOK_FLAGS, stdin=CLIENT_SECRET, monkeypatch=monkeypatch
    )
    flags = [f if f != "Sales" else "Other" for f in OUTLOOK_FLAGS]
    assert "nothing on standard input" in bad("add", *flags, stdin="", monkeypatch=monkeypatch)
    assert "cannot read" in bad(
        "add", "--name", "Y", "--auth", "password", "--password-file", "/nonexistent/x"
    )


def test_list_json_has_no_secret(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    run("add", *OUTLOOK_FLAGS, stdin=CLIENT_SECRET, monkeypatch=monkeypatch)
    out, _ = run("list", "--json")
    (row,) = json.loads(out)
    assert row["name"] == "Sales" and row["has_client_secret"] is True
    assert CLIENT_SECRET not in out
    table, _ = run("list")
    assert "Sales" in table and "Outlook OAuth Authentication" in table and "Not connected" in table


def test_list_without_servers_says_how_to_add_one(db: None) -> None:
    assert "servers add" in run("list")[0]


def servers_json(tmp_path: Path, document: Any, name: str = "servers.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def test_export_import_round_trip(
    db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(
        "add",
        *OUTLOOK_FLAGS,
        "--from-filter",
        "contoso.com",
        stdin=CLIENT_SECRET,
        monkeypatch=monkeypatch,
    )
    run(
        "add",
        "--name",
        "Inbox only",
        "--auth",
        "password",
        "--username",
        "in@example.com",
        "--password-stdin",
        "--incoming",
        "pop3",
        "--incoming-host",
        "pop.example.com",
        stdin="pw-123",
        monkeypatch=monkeypatch,
    )
    exported, _ = run("export")
    document = json.loads(exported)
    assert [s["name"] for s in document["servers"]] == ["Inbox only", "Sales"]
    assert CLIENT_SECRET not in exported and "pw-123" not in exported
    assert "client_secret" not in document["servers"][1]
    assert run("export")[0] == exported, "export is stable"

    document["servers"][1]["priority"] = 1
    document["servers"].append(
        {
            "name": "New",
            "auth_method": "password",
            "username": "n@example.com",
            "smtp_host": "smtp.example.com",
        }
    )
    secrets = servers_json(tmp_path, {"New": {"password": "new-pw"}}, "secrets.json")
    out, _ = run("import", servers_json(tmp_path, document), "--secrets-file", secrets)
    assert "created 'New'" in out and "updated 'Sales'" in out
    sales = MailServer.objects.get(name="Sales")
    assert sales.priority == 1
    assert sales.client_secret.reveal() == CLIENT_SECRET, "import keeps stored secrets"  # type: ignore[union-attr]
    assert MailServer.objects.get(name="New").password.reveal() == "new-pw"  # type: ignore[union-attr]
    document["servers"][1]["priority"] = 10
    run("import", servers_json(tmp_path, document), "--secrets-file", secrets)
    again = json.loads(run("export")[0])
    kept = [s for s in again["servers"] if s["name"] != "New"]
    assert kept == json.loads(exported)["servers"]


def test_import_into_an_empty_installation_warns_about_missing_secrets(
    db: None, tmp_path: Path
) -> None:
    document = {
        "servers": [
            {
                "name": "Sales",
                "auth_method": "outlook",
                "username": "sales@contoso.com",
                "client_id": CLIENT_ID,
            }
        ]
    }
    out, err = run("import", servers_json(tmp_path, document))
    assert "created 'Sales'" in out
    assert "servers[0]: 'Sales' has no Client Secret yet" in err


def test_import_reports_every_problem_with_its_path_and_changes_nothing(
    db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("add", *OUTLOOK_FLAGS, stdin=CLIENT_SECRET, monkeypatch=monkeypatch)
    document = {
        "servers": [
            {"name": "Sales", "priority": 99},
            {
                "name": "A",
                "auth_method": "password",
                "username": "a@example.com",
                "smtp_host": "smtp.example.com",
                "smtp_port": 0,
            },
            {
                "name": "B",
                "auth_method": "outlook",
                "username": "b@contoso.com",
                "client_id": "nope",
                "tenant": "bad tenant",
            },
            {"name": "C", "smtp_port": "587", "colour": "red", "client_secret": "x"},
            {
                "name": "A",
                "auth_method": "password",
                "username": "a@example.com",
                "smtp_host": "smtp.example.com",
            },
            "not an object",
        ]
    }
    message = bad("import", servers_json(tmp_path, document))
    for expected in (
        "servers[1].smtp_port: SMTP Port must be a number from 1 to 65535.",
        "servers[2].client_id: ",
        "servers[2].tenant: ",
        "servers[3].smtp_port: expected a whole number, got '587'",
        "servers[3].colour: unknown setting",
        "servers[3].client_secret: secrets do not belong in the configuration file",
        "servers[4].name: 'A' is also used by servers[1]",
        "servers[5]: expected an object",
        "nothing was changed",
    ):
        assert expected in message, expected
    assert MailServer.objects.get().priority == 10
    assert MailServer.objects.count() == 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{not json", "FILE: "), ("[]", '$: expected an object {"version": 1, "servers": [...]}')],
)
def test_import_refuses_a_malformed_file(
    db: None, tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    assert expected in bad("import", str(path))


def test_import_dry_run_changes_nothing(db: None, tmp_path: Path) -> None:
    document = {
        "servers": [
            {
                "name": "A",
                "auth_method": "password",
                "username": "a@example.com",
                "smtp_host": "smtp.example.com",
            }
        ]
    }
    out, _ = run("import", servers_json(tmp_path, document), "--dry-run")
    assert "valid" in out and not MailServer.objects.exists()


def test_a_secrets_file_for_an_unknown_server_is_refused(db: None, tmp_path: Path) -> None:
    document = {
        "servers": [
            {
                "name": "A",
                "auth_method": "password",
                "username": "a@example.com",
                "smtp_host": "smtp.example.com",
            }
        ]
    }
    secrets = servers_json(tmp_path, {"Typo": {"password": "x"}}, "s.json")
    assert "secrets.Typo: no server of that name" in bad(
        "import", servers_json(tmp_path, document), "--secrets-file", secrets
    )
    wrong = servers_json(tmp_path, {"A": {"token": "x"}}, "s2.json")
    assert "A.token: unknown secret" in bad(
        "import", servers_json(tmp_path, document), "--secrets-file", wrong
    )


@pytest.mark.nodb
def test_the_real_command_exits_2_and_never_echoes_an_argv_secret(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MAILGATE_HOME": str(tmp_path),
        "MAILGATE_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
    }
    # With the schema in place (without it the CLI stops earlier, naming the database).
    subprocess.run(
        [sys.executable, "-m", "mailgate.cli", "migrate", "--verbosity", "0"],
        env=env,
        timeout=120,
        check=True,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailgate.cli",
            "servers",
            "add",
            "--name",
            "X",
            "--auth",
            "outlook",
            "--client-secret",
            "hunter2-value",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "--client-secret-stdin" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
