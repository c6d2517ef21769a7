"""The Incoming Mail settings: provider defaults, the rules, CLI flags and export/import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailgate.servers.config import export_servers, import_servers
from mailgate.servers.models import MailServer
from tests.servers.conftest import outlook_data, password_data
from tests.servers.test_cli import bad, run
from tests.servers.test_validation import errors_of


def test_outlook_imap_gets_the_providers_defaults_and_keep(db: None) -> None:
    from mailgate.servers.forms import MailServerForm

    form = MailServerForm(outlook_data(incoming_protocol="imap", incoming_folders=""))
    assert form.is_valid(), form.errors
    server = form.save()
    assert (server.incoming_host, server.incoming_port, server.incoming_security) == (
        "outlook.office365.com",
        993,
        "ssl",
    )
    assert server.folder_list() == ["INBOX"]
    assert (server.after_fetch, server.fetch_existing, server.poll_interval) == ("keep", False, 60)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        (
            {"incoming_protocol": "pop3", "after_fetch": "mark_read"},
            "after_fetch",
            "Keep or Delete",
        ),
        ({"incoming_protocol": "pop3", "after_fetch": "move"}, "after_fetch", "Keep or Delete"),
        (
            {"incoming_protocol": "imap", "after_fetch": "move"},
            "move_to_folder",
            "Enter the folder",
        ),
        (
            {"incoming_protocol": "imap", "after_fetch": "move", "move_to_folder": "INBOX"},
            "move_to_folder",
            "one of the Folders",
        ),
        ({"incoming_protocol": "imap", "poll_interval": "0"}, "poll_interval", "1 to 86400"),
        ({"incoming_protocol": "imap", "incoming_security": "none"}, "incoming_security", "none"),
        ({"incoming_protocol": "imap", "webhook_url": "ftp://x.example"}, "webhook_url", "http"),
        ({"incoming_protocol": "imap", "incoming_folders": 'a"b'}, "incoming_folders", 'a"b'),
    ],
)
def test_bad_incoming_settings_name_the_field(
    db: None, changes: dict[str, str], field: str, words: str
) -> None:
    errors = errors_of(password_data(**changes))
    assert field in errors, errors
    assert words in " ".join(errors[field])


def test_folders_take_several_lines_and_drop_duplicates(db: None) -> None:
    from mailgate.servers.forms import MailServerForm

    form = MailServerForm(
        password_data(incoming_protocol="imap", incoming_host="imap.example.com",
                      incoming_folders="INBOX\r\n Invoices \nINBOX\n\nSupport/Tickets")
    )  # fmt: skip
    assert form.is_valid(), form.errors
    assert form.save().folder_list() == ["INBOX", "Invoices", "Support/Tickets"]


def test_export_writes_folders_as_a_list_and_import_takes_it_back(db: None) -> None:
    MailServer.objects.create(
        name="Orders",
        auth_method="password",
        username="o@example.com",
        password="pw",
        incoming_protocol="imap",
        incoming_host="imap.example.com",
        incoming_port=993,
        incoming_folders="INBOX\nOrders",
        poll_interval=120,
        fetch_existing=True,
        after_fetch="mark_read",
        webhook_url="https://erp.example.com/hook",
        webhook_secret="sign-me",
    )
    document = export_servers()
    entry = document["servers"][0]
    assert entry["incoming_folders"] == ["INBOX", "Orders"]
    assert (entry["poll_interval"], entry["fetch_existing"], entry["after_fetch"]) == (
        120,
        True,
        "mark_read",
    )
    assert "sign-me" not in json.dumps(document) and "webhook_secret" not in entry
    entry["incoming_folders"] = ["Orders", "Archive"]
    entry["fetch_existing"] = False
    report = import_servers(document)
    assert not report.errors, report.errors
    server = MailServer.objects.get()
    assert server.folder_list() == ["Orders", "Archive"] and not server.fetch_existing
    assert server.webhook_secret.reveal() == "sign-me"  # type: ignore[union-attr]
    entry["incoming_folders"] = "Orders"
    assert "expected a list of strings" in " ".join(import_servers(document).errors)


def test_servers_add_takes_the_webhook_secret_from_a_file_only(db: None, tmp_path: Path) -> None:
    secret = tmp_path / "hook.txt"
    secret.write_text("whsec-123\n")
    password = tmp_path / "pw.txt"
    password.write_text("pw\n")
    run(
        "add", "--name", "Hooked", "--auth", "password", "--username", "h@example.com",
        "--password-file", str(password), "--incoming", "pop3", "--incoming-host",
        "pop.example.com", "--after-fetch", "delete", "--webhook-url",
        "https://erp.example.com/hook", "--webhook-secret-file", str(secret),
    )  # fmt: skip
    server = MailServer.objects.get()
    assert server.webhook_secret.reveal() == "whsec-123"  # type: ignore[union-attr]
    assert (server.incoming_port, server.after_fetch) == (995, "delete")
    message = bad("add", "--name", "X", "--auth", "password", "--webhook-secret", "plain")
    assert "not accepted on the command line" in message
