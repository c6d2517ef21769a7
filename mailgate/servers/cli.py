"""Subcommands of `mailgate servers`; the command builds its parser from SUBCOMMANDS."""

from __future__ import annotations

import io
import json
import sys
from argparse import SUPPRESS, ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from rich.console import Console
from rich.table import Table

from mailgate.progress import CommandProgress
from mailgate.servers.api import server_out
from mailgate.servers.config import build_form, export_servers, form_problems, import_servers
from mailgate.servers.models import (
    AFTER_FETCH_CHOICES,
    AUTH_METHODS,
    CLOUD_CHOICES,
    INCOMING_CHOICES,
    INCOMING_SECURITY_CHOICES,
    SECURITY_CHOICES,
    MailServer,
)
from mailgate.servers.validation import SECRET_FIELDS

BAD_INPUT = 2


def bad_input(message: str) -> CommandError:
    return CommandError(message, returncode=BAD_INPUT)


class Subcommand:
    """One `mailgate servers <name>` subcommand."""

    help = ""

    def add_arguments(self, parser: ArgumentParser) -> None:
        pass

    def handle(self, command: BaseCommand, options: dict[str, Any]) -> None:
        raise NotImplementedError


class ListServers(Subcommand):
    help = "list mail servers and their status"

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON (no secrets)")

    def handle(self, command: BaseCommand, options: dict[str, Any]) -> None:
        servers = list(MailServer.objects.all())
        if options["json"]:
            rows = [server_out(s).model_dump(mode="json") for s in servers]
            command.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False))
            return
        if not servers:
            command.stdout.write(
                "No mail server yet: add one with `mailgate servers add` or the console."
            )
            return
        table = Table(
            "Mail Server Description",
            "Username",
            "Authenticate Using",
            "Status",
            "Active",
            "SMTP",
            "Incoming",
        )
        for s in servers:
            incoming = (
                f"{s.incoming_protocol.upper()} {s.incoming_host}:{s.incoming_port}"
                if s.has_incoming
                else "-"
            )
            smtp = f"{s.smtp_host}:{s.smtp_port}" if s.smtp_host else "-"
            table.add_row(
                s.name,
                s.username,
                s.auth_label,
                s.get_status_display(),
                "yes" if s.active else "no",
                smtp,
                incoming,
            )
        buffer = io.StringIO()
        Console(file=buffer, width=160, color_system=None).print(table)
        command.stdout.write(buffer.getvalue(), ending="")


# Flags of `servers add`, spelled as documented in the README, and the form field each one sets.
ADD_FLAGS: dict[str, str] = {
    "--name": "name",
    "--auth": "auth_method",
    "--username": "username",
    "--client-id": "client_id",
    "--client-secret-expires-on": "client_secret_expires_on",
    "--tenant": "tenant",
    "--cloud": "cloud",
    "--smtp-host": "smtp_host",
    "--smtp-port": "smtp_port",
    "--security": "smtp_security",
    "--from-filter": "from_filter",
    "--send-as": "send_as",
    "--priority": "priority",
    "--incoming": "incoming_protocol",
    "--incoming-host": "incoming_host",
    "--incoming-port": "incoming_port",
    "--incoming-security": "incoming_security",
    "--folder": "incoming_folders",
    "--poll-interval": "poll_interval",
    "--fetch-existing": "fetch_existing",
    "--idle": "idle",
    "--after-fetch": "after_fetch",
    "--move-to-folder": "move_to_folder",
    "--webhook-url": "webhook_url",
    "--limit-per-minute": "limit_per_minute",
    "--limit-recipients-per-day": "limit_recipients_per_day",
    "--limit-connections": "limit_connections",
    "--max-message-bytes": "max_message_bytes",
}
SECRET_SOURCES = {
    "password": ("--password-stdin", "--password-file"),
    "client_secret": ("--client-secret-stdin", "--client-secret-file"),
    "private_key": ("--private-key-stdin", "--private-key-file"),
    "webhook_secret": ("--webhook-secret-stdin", "--webhook-secret-file"),
}
FIELD_FLAGS = {field: flag for flag, field in ADD_FLAGS.items()} | {
    "active": "--inactive",
    "certificate": "--certificate-file",
    **{name: "|".join(flags) for name, flags in SECRET_SOURCES.items()},
}


def _keys(choices: list[tuple[str, str]]) -> list[str]:
    return [key for key, _ in choices]


def _read_file(flag: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise bad_input(f"{flag}: cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise bad_input(f"{flag}: {path} is not a text (PEM) file") from exc


class AddServer(Subcommand):
    help = "add a mail server (secrets only from standard input or a file, never the command line)"

    def add_arguments(self, parser: ArgumentParser) -> None:
        a = parser.add_argument
        a("--name", required=True, help="Mail Server Description (unique)")
        a("--auth", required=True, choices=list(AUTH_METHODS), help="Authenticate Using")
        a("--username", default="", help="the mailbox address (or login name for password servers)")
        a(
            "--client-id",
            default="",
            help="OAuth client ID (Outlook: the Application (client) ID GUID)",
        )
        a("--client-secret-expires-on", default="", metavar="YYYY-MM-DD")
        a(
            "--tenant",
            default="",
            help="Outlook: common, organizations, consumers, tenant ID or domain",
        )
        a("--cloud", default="global", choices=_keys(CLOUD_CHOICES), help="Outlook national cloud")
        a("--smtp-host", default="", help="SMTP Server (default: the provider's)")
        a("--smtp-port", type=int, default=None, help="SMTP Port (default by security)")
        a(
            "--security",
            default="starttls",
            choices=_keys(SECURITY_CHOICES),
            help="Connection Security",
        )
        a(
            "--from-filter",
            default="",
            help="addresses or domains this server sends for, comma-separated",
        )
        a("--send-as", default="", help="further sender addresses, comma-separated")
        a("--priority", type=int, default=10, help="lower is tried first")
        a("--inactive", action="store_true", help="create the server switched off")
        a("--incoming", default="none", choices=_keys(INCOMING_CHOICES), help="Incoming Mail")
        a("--incoming-host", default="")
        a("--incoming-port", type=int, default=None)
        a("--incoming-security", default="ssl", choices=_keys(INCOMING_SECURITY_CHOICES))
        a(
            "--folder",
            action="append",
            default=None,
            help="IMAP folder to fetch from (repeatable; default INBOX)",
        )
        a("--poll-interval", type=int, default=None, metavar="SECONDS", help="default 60")
        a(
            "--fetch-existing",
            action="store_true",
            help="also fetch the mail already in the folders (default: only new mail)",
        )
        a("--idle", action="store_true", help="IMAP IDLE for near-instant arrival")
        a("--after-fetch", default="keep", choices=_keys(AFTER_FETCH_CHOICES))
        a("--move-to-folder", default="")
        a("--webhook-url", default="", help="POST each new message's JSON here")
        a("--certificate-file", default="", metavar="FILE", help="client certificate (PEM)")
        for name, (stdin_flag, file_flag) in SECRET_SOURCES.items():
            group = parser.add_mutually_exclusive_group()
            group.add_argument(
                stdin_flag,
                action="store_true",
                help=f"read the {name.replace('_', ' ')} from standard input",
            )
            group.add_argument(
                file_flag,
                default="",
                metavar="FILE",
                help=f"read the {name.replace('_', ' ')} from FILE",
            )
        for flag in (
            "--limit-per-minute",
            "--limit-recipients-per-day",
            "--limit-connections",
            "--max-message-bytes",
        ):
            a(flag, type=int, default=None, help="default: the provider's documented limit")
        # Catch secrets typed on the command line (shell history, `ps`) without echoing them.
        for name in SECRET_SOURCES:
            a(
                "--" + name.replace("_", "-"),
                dest=f"argv_{name}",
                nargs="?",
                const="",
                default=None,
                help=SUPPRESS,
            )

    def _secrets(self, options: dict[str, Any]) -> dict[str, str]:
        for name, (stdin_flag, _) in SECRET_SOURCES.items():
            if options[f"argv_{name}"] is not None:
                flag = "--" + name.replace("_", "-")
                raise bad_input(
                    f"{flag}: secrets are not accepted on the command line (they would stay in the "
                    f"shell history and the process list); use {stdin_flag} or "
                    f"{SECRET_SOURCES[name][1]} FILE"
                )
        stdin_flags = [
            f for n, (f, _) in SECRET_SOURCES.items() if options[f[2:].replace("-", "_")]
        ]
        if len(stdin_flags) > 1:
            raise bad_input(
                f"{stdin_flags[1]}: only one secret can come from standard input; use a file for the other"
            )
        secrets: dict[str, str] = {}
        for name, (stdin_flag, file_flag) in SECRET_SOURCES.items():
            if options[stdin_flag[2:].replace("-", "_")]:
                value = sys.stdin.read()
                if not value.strip():
                    raise bad_input(f"{stdin_flag}: nothing on standard input")
                secrets[name] = value.strip() if name != "private_key" else value
            elif path := options[file_flag[2:].replace("-", "_")]:
                value = _read_file(file_flag, path)
                if not value.strip():
                    raise bad_input(f"{file_flag}: {path} is empty")
                secrets[name] = value.strip() if name != "private_key" else value
        return secrets

    def handle(self, command: BaseCommand, options: dict[str, Any]) -> None:
        secrets = self._secrets(options)
        if MailServer.objects.filter(name=options["name"]).exists():
            raise bad_input(
                f"--name: a mail server named {options['name']!r} exists already; change it in the "
                "console or with `mailgate servers import`"
            )
        values: dict[str, Any] = {
            field: options[flag[2:].replace("-", "_")] for flag, field in ADD_FLAGS.items()
        }
        values["active"] = not options["inactive"]
        values["incoming_folders"] = "\n".join(options["folder"] or ["INBOX"])
        if options["certificate_file"]:
            values["certificate"] = _read_file("--certificate-file", options["certificate_file"])
        form = build_form(values, None, secrets)
        if not form.is_valid():
            lines = [
                f"{FIELD_FLAGS.get(name, name) if name != '__all__' else 'servers add'}: {message}"
                for name, messages in form_problems(form).items()
                for message in messages
            ]
            raise bad_input("\n".join(lines))
        server = form.save()
        for warning in form.warnings:
            command.stderr.write(f"warning: {warning}")
        command.stdout.write(f"Mail server {server.name!r} added (id {server.pk}).")
        if server.is_oauth:
            command.stdout.write(
                f"Register this redirect URL in the app registration: {server.redirect_url}\n"
                "Then connect the account in the console (Connect your "
                f"{'Outlook' if server.auth_method == 'outlook' else 'Gmail'} account)."
            )
            if not settings.CONFIG.public_url_explicit:
                command.stderr.write(
                    "warning: MAILGATE_PUBLIC_URL is not set, so this URL assumes the console at "
                    f"{settings.MAILGATE_PUBLIC_URL}; `mailgate run --port N` serves it at another "
                    "address, and the provider must have the URL of the address you open. Set "
                    "MAILGATE_PUBLIC_URL to that address to be sure."
                )


class ExportServers(Subcommand):
    help = "print every server's settings as JSON (without secrets)"

    def handle(self, command: BaseCommand, options: dict[str, Any]) -> None:
        command.stdout.write(json.dumps(export_servers(), indent=2, ensure_ascii=False))


def _load_json(flag: str, path: str) -> Any:
    text = sys.stdin.read() if path == "-" else _read_file(flag, path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_input(
            f"{flag}: {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from exc


class ImportServers(Subcommand):
    help = (
        "create or update servers by name from an exported JSON file; nothing changes on any error"
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "file", metavar="FILE", help="the JSON of `servers export` (- for stdin)"
        )
        parser.add_argument(
            "--secrets-file",
            metavar="FILE",
            help='JSON {"<name>": {"client_secret": "...", "password": "...", "private_key": "..."}}',
        )
        parser.add_argument("--dry-run", action="store_true", help="validate only")
        parser.add_argument(
            "--json",
            action="store_true",
            help="print the outcome as JSON (created, updated, warnings; errors exit 2 as usual)",
        )

    def handle(self, command: BaseCommand, options: dict[str, Any]) -> None:
        document = _load_json("FILE", options["file"])
        secrets: dict[str, dict[str, str]] = {}
        if options["secrets_file"]:
            raw = _load_json("--secrets-file", options["secrets_file"])
            problems = _secret_file_problems(raw)
            if problems:
                raise bad_input("\n".join(f"--secrets-file: {p}" for p in problems))
            secrets = raw
        as_json = bool(options.get("json"))
        entries = document.get("servers") if isinstance(document, dict) else None
        # A progress bar on a terminal (piped or with --json: only the outcome).
        with CommandProgress(
            command.stdout,
            command.stderr,
            "Checking",
            len(entries) if isinstance(entries, list) else None,
            enabled=not as_json,
        ) as progress:

            def tell(step: str, done: int, total: int) -> None:
                progress.update(description=f"{step} servers", completed=done, total=total)

            report = import_servers(document, secrets, dry_run=options["dry_run"], progress=tell)
        if not as_json:
            for warning in report.warnings:
                command.stderr.write(f"warning: {warning}")
        if report.errors:
            raise bad_input(
                f"{len(report.errors)} problem(s), nothing was changed:\n"
                + "\n".join(report.errors)
            )
        if as_json:
            outcome = {
                "dry_run": bool(options["dry_run"]),
                "created": [] if options["dry_run"] else report.created,
                "updated": [] if options["dry_run"] else report.updated,
                "warnings": report.warnings,
            }
            command.stdout.write(json.dumps(outcome, indent=2, ensure_ascii=False))
            return
        if options["dry_run"]:
            command.stdout.write("The file is valid; nothing was changed (--dry-run).")
            return
        for name in report.created:
            command.stdout.write(f"created {name!r}")
        for name in report.updated:
            command.stdout.write(f"updated {name!r}")


def _secret_file_problems(raw: Any) -> list[str]:
    if not isinstance(raw, dict):
        return ['expected an object {"<server name>": {"client_secret": "..."}}']
    problems = []
    for name, values in raw.items():
        if not isinstance(values, dict):
            problems.append(f"{name}: expected an object of secrets")
            continue
        for key, value in values.items():
            if key not in SECRET_FIELDS:
                problems.append(
                    f"{name}.{key}: unknown secret (expected {', '.join(SECRET_FIELDS)})"
                )
            elif not isinstance(value, str):
                problems.append(f"{name}.{key}: expected a string")
    return problems
