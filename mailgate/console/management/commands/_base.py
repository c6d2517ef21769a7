from __future__ import annotations

from argparse import ArgumentParser, ArgumentTypeError

from django.core.management.base import CommandError

# Exit statuses of every mailgate command: 1 when the work failed, 2 for bad usage or input (as
# argparse exits for an unknown option), so a script can tell "fix the call" from "try again".
FAILED = 1
BAD_INPUT = 2


def bad_input(message: str) -> CommandError:
    """A CommandError for bad usage or input: exit status 2."""
    return CommandError(message, returncode=BAD_INPUT)


def port(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise ArgumentTypeError(f"--port must be a number from 1 to 65535, not {value!r}") from exc
    if not 1 <= number <= 65535:
        raise ArgumentTypeError(f"--port must be from 1 to 65535, not {number}")
    return number


def add_listen_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=port, default=8000, help="port to listen on (default 8000)")
