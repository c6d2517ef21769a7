"""The `mailgate` console script: mailgate's own commands (Django management commands underneath).

`mailgate --help` lists them grouped by purpose, with hyphenated names; Django's development
commands still run but are not listed. A command that needs the database stops with one clear
message naming the MAILGATE_HOME and database it looked at when the schema is missing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

PROG = "mailgate"

# Listed by `mailgate --help`, in this order: (group, [(name, what it does)]). The name is the one
# typed (hyphens); the Django command behind it is the name with underscores (or in ALIASES).
# A mailgate command missing here is listed under "Other" (so a new one is never hidden).
GROUPS: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "Start",
        [
            ("demo", "the offline sandbox and mailgate together, demo servers ready to connect"),
            ("run", "serve the console and API with one worker (migrates first)"),
            ("sandbox", "the offline stand-in for Microsoft and Google on its own"),
        ],
    ),
    (
        "Mail",
        [
            ("send", "queue a message (with --wait: until it is sent)"),
            ("outbox", "list, retry and cancel queued messages"),
            ("fetch", "fetch incoming mail now"),
        ],
    ),
    (
        "Configure",
        [
            ("servers", "list, add, import and export mail servers"),
            ("users", "list, add, deactivate users and set their passwords"),
            ("api-keys", "create, list and revoke REST API keys"),
            ("create-admin", "create or reset an administrator"),
        ],
    ),
    (
        "Operate",
        [
            ("web", "serve the console and API only"),
            ("worker", "send queued mail and keep tokens fresh"),
            ("doctor", "check the deployment and every server, with the fix for each problem"),
            ("migrate", "create or update the database schema"),
            ("rotate-keys", "re-encrypt stored secrets with the newest key"),
            ("relay", "the SMTP relay for applications that only speak SMTP"),
            ("audit", "the log of security events"),
            ("backup", "copy the SQLite database to a file (PostgreSQL: pg_dump)"),
            ("purge", "delete the content of messages finished long ago"),
        ],
    ),
]

# Typed name -> Django command name, where it is not just hyphens for underscores.
ALIASES = {"api-keys": "apikeys", "create-admin": "createadmin"}

# Commands that work without mailgate's tables (they create them, or report their absence).
NO_SCHEMA_NEEDED = {"run", "migrate", "doctor", "help"}
SCHEMA_TABLE = "servers_mailserver"


def django_name(name: str) -> str:
    return ALIASES.get(name, name.replace("-", "_"))


def typed_name(command: str) -> str:
    reverse = {v: k for k, v in ALIASES.items()}
    return reverse.get(command, command.replace("_", "-"))


def mailgate_commands() -> dict[str, str]:
    """Every command mailgate's own apps provide: typed name -> Django name."""
    from django.core.management import get_commands

    return {
        typed_name(name): name
        for name, app in get_commands().items()
        if app.startswith("mailgate") and not name.startswith("_")
    }


def usage() -> str:
    """`mailgate --help`: mailgate's commands by purpose."""
    available = {**mailgate_commands(), "demo": "demo", "sandbox": "sandbox", "migrate": "migrate"}
    lines = [
        f"usage: {PROG} <command> [options]   ({PROG} <command> --help for its options)",
        "",
    ]
    listed: set[str] = set()
    for group, commands in GROUPS:
        shown = [(name, text) for name, text in commands if name in available]
        if not shown:
            continue
        lines.append(f"{group}:")
        lines.extend(f"  {name:<14}{text}" for name, text in shown)
        lines.append("")
        listed.update(name for name, _ in shown)
    others = sorted(set(available) - listed)
    if others:
        lines.append("Other:")
        lines.extend(f"  {name}" for name in others)
        lines.append("")
    lines.append(
        "Settings come from the environment (MAILGATE_HOME, MAILGATE_DATABASE_URL, "
        "MAILGATE_PUBLIC_URL, ...): see the README, Configuration."
    )
    return "\n".join(lines)


def _sqlite_path() -> Path | None:
    from django.conf import settings

    database = settings.DATABASES["default"]
    if "sqlite" not in database["ENGINE"]:
        return None
    return Path(str(database["NAME"]))


def missing_schema(command: str) -> str:
    """The message for a command run against a database without mailgate's tables ("" if fine)."""
    from django.conf import settings
    from django.db import DatabaseError, connection

    path = _sqlite_path()
    if path is not None and not path.exists():
        where = f"the SQLite database {path} does not exist"
    else:
        try:
            tables = connection.introspection.table_names()
        except DatabaseError as exc:
            return f"{PROG} {command}: cannot open the database: {exc}"
        if SCHEMA_TABLE in tables:
            return ""
        where = (
            f"the SQLite database {path} has no mailgate tables"
            if path is not None
            else "the database of MAILGATE_DATABASE_URL has no mailgate tables"
        )
    demo_home = Path.cwd() / "var" / "demo" / "mailgate-home"
    demo = (
        f", or set MAILGATE_HOME to the demo's folder: export MAILGATE_HOME={demo_home}"
        if demo_home.exists() and demo_home != Path(settings.MAILGATE_HOME)
        else ""
    )
    return (
        f"{PROG} {command}: {where} (MAILGATE_HOME={settings.MAILGATE_HOME}).\n"
        f"Run `{PROG} migrate`{demo}."
    )


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "sandbox":
        # The sandbox stands apart from mailgate's database and settings.
        from mailgate.sandbox.cli import main as sandbox_main

        sys.exit(sandbox_main(args[1:]))
    if args and args[0] == "demo":
        # The demo runs the sandbox here and `mailgate run` as a child with its own settings.
        from mailgate.sandbox.demo import main as demo_main

        sys.exit(demo_main(args[1:]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailgate.settings")
    from mailgate.conf import SettingsError

    try:
        import django

        django.setup()
    except SettingsError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    from django.core.management import (
        BaseCommand,
        execute_from_command_line,
        get_commands,
        load_command_class,
    )

    from mailgate.audit.log import actor_scope

    if not args or (args[0] in ("-h", "--help", "help") and len(args) == 1):
        print(usage())
        sys.exit(0)
    if args[0] == "help":
        args = [args[1], "--help"]
    typed = args[0]
    command = django_name(typed)
    asks_help = "-h" in args or "--help" in args
    needs_schema = command in mailgate_commands().values() and command not in NO_SCHEMA_NEEDED
    if command == "web" and "--migrate" in args:
        needs_schema = False
    if needs_schema and not asks_help and (problem := missing_schema(typed)):
        print(problem, file=sys.stderr)
        sys.exit(2)
    # Audit events of a command name the operating-system user who ran it.
    with actor_scope(f"cli:{_os_user()}"), _settings_errors_as_usage():
        app = get_commands().get(command)
        if app is None or command not in mailgate_commands().values():
            execute_from_command_line(
                [PROG, command, *args[1:]]
            )  # Django's commands, and its errors
            return
        # Run it directly so its usage line and errors name it as typed: `mailgate rotate-keys`.
        handler = app if isinstance(app, BaseCommand) else load_command_class(app, command)
        handler.run_from_argv([PROG, typed, *args[1:]])


@contextlib.contextmanager
def _settings_errors_as_usage() -> Iterator[None]:
    """A tuning variable read when its module loads (MAILGATE_INBOX_PACK_MIN=abc) is reported like
    one read at start-up: its name and what it expects, exit status 2, no traceback."""
    from mailgate.conf import SettingsError

    try:
        yield
    except SettingsError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


if __name__ == "__main__":
    main()
