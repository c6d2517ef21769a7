from __future__ import annotations

from argparse import ArgumentParser, ArgumentTypeError


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
