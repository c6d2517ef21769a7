from __future__ import annotations

import sys
from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from mailgate.accounts.users import create_user, generate_password


class Command(BaseCommand):
    help = "Create an administrator (or reset its password). The password comes from stdin, or is generated."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--email", required=True, help="the administrator's e-mail address (sign-in name)"
        )
        parser.add_argument(
            "--password-stdin", action="store_true", help="read the password from standard input"
        )
        parser.add_argument(
            "--viewer", action="store_true", help="create a read-only viewer instead"
        )

    def handle(
        self, *args: Any, email: str, password_stdin: bool, viewer: bool, **options: Any
    ) -> None:
        generated = not password_stdin
        password = sys.stdin.readline().rstrip("\r\n") if password_stdin else generate_password()
        if password_stdin and not password:
            raise CommandError("--password-stdin: no password on standard input", returncode=2)
        try:
            create_user(email, password, administrator=not viewer)
        except ValidationError as exc:
            field = "--email" if "mail" in " ".join(exc.messages).lower() else "--password-stdin"
            raise CommandError(f"{field}: {' '.join(exc.messages)}", returncode=2) from exc
        role = "viewer" if viewer else "administrator"
        self.stdout.write(f"{role} {email.lower()} is ready.")
        if generated:
            self.stdout.write(
                f"One-time password (shown once, change it after signing in): {password}"
            )
