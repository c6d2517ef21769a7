"""The `mailgate` console script: every command is a Django management command."""

from __future__ import annotations

import os
import sys

# Command names with dashes on the command line, underscores as Django commands.
ALIASES = {"rotate-keys": "rotate_keys"}


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
        print(f"mailgate: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    from django.core.management import execute_from_command_line

    from mailgate.audit.log import actor_scope

    if args:
        args[0] = ALIASES.get(args[0], args[0])
    # Audit events of a command name the operating-system user who ran it.
    with actor_scope(f"cli:{_os_user()}"):
        execute_from_command_line(["mailgate", *args])


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


if __name__ == "__main__":
    main()
