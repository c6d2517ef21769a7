"""`mailgate sandbox`: run the offline sandbox in the foreground, or call its control API (`ctl`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

DEFAULT_PORT_BASE = 8400
DEFAULT_STATE = Path("var/sandbox")


def _port_base(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port-base must be a number, not {value!r}") from None
    if not 1024 <= number <= 65531:
        raise argparse.ArgumentTypeError(
            f"--port-base must be between 1024 and 65531 (it uses N to N+4), not {number}"
        )
    return number


def _host(value: str) -> str:
    from mailgate.sandbox.server import is_loopback

    if not is_loopback(value):
        raise argparse.ArgumentTypeError(
            f"--host {value} is not a loopback address: the sandbox serves 127.0.0.1, ::1 or "
            "localhost only, so that nothing outside this machine can reach it"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailgate sandbox",
        description=(
            "Offline stand-in for Microsoft's identity platform, Google OAuth, Exchange Online SMTP "
            "and IMAP/POP (Dovecot). Identity HTTP on N, SMTP on N+1, IMAP on N+2, POP3 on N+3, "
            "identity HTTPS on N+4."
        ),
    )
    parser.add_argument(
        "--host", type=_host, default="127.0.0.1", help="loopback address (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port-base",
        type=_port_base,
        default=DEFAULT_PORT_BASE,
        metavar="N",
        help="first port (default 8400)",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=DEFAULT_STATE,
        metavar="DIR",
        help="state directory (default ./var/sandbox)",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="JSON or TOML with tenants, apps, users, ..."
    )
    parser.add_argument(
        "--no-dovecot", action="store_true", help="do not start IMAP/POP3 (Dovecot)"
    )
    sub = parser.add_subparsers(dest="command")
    ctl = sub.add_parser(
        "ctl",
        help="call the control API of a running sandbox",
        description=(
            "Call a control action, e.g. `mailgate sandbox ctl set_faults fail=503` or "
            "`mailgate sandbox ctl revoke_grants user=alex@contoso.example`. Values are parsed as JSON "
            "when they can be (numbers, true/false, null, lists), else taken as text. "
            "`mailgate sandbox ctl actions` lists the actions."
        ),
    )
    ctl.add_argument("--url", help="control API base URL (default http://HOST:N)")
    ctl.add_argument("--host", type=_host, default=argparse.SUPPRESS, help="as for the sandbox")
    ctl.add_argument("--port-base", type=_port_base, default=argparse.SUPPRESS, metavar="N")
    ctl.add_argument("action", help="control action name (see docs/sandbox.md)")
    ctl.add_argument("params", nargs="*", metavar="KEY=VALUE")
    return parser


def _parse_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(
                f"parameter {item!r} must look like KEY=VALUE, e.g. user=alex@contoso.example"
            )
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def run_ctl(args: argparse.Namespace) -> int:
    import httpx

    from mailgate.sandbox.control import ControlAPIError, ControlClient

    url = (
        args.url
        or f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port_base}"
    )
    try:
        params = _parse_params(args.params)
    except ValueError as exc:
        print(f"mailgate sandbox ctl: {exc}", file=sys.stderr)
        return 2
    client = ControlClient(url)
    try:
        if args.action == "actions":
            result: Any = client.call("unknown-action-listing")
        else:
            result = client.call(args.action, **params)
    except ControlAPIError as exc:
        if args.action == "actions":
            print(exc.body.get("error_description", ""))
            return 0
        print(f"mailgate sandbox ctl {args.action}: {exc}", file=sys.stderr)
        return 2
    except (OSError, httpx.TransportError) as exc:
        print(
            f"mailgate sandbox ctl: cannot reach the sandbox at {url} ({exc}); is it running?",
            file=sys.stderr,
        )
        return 1
    finally:
        client.close()
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def describe(sandbox: Any) -> str:
    """The `export` lines, then the demo directory in plain words."""
    lines = [f"export {key}={value}" for key, value in sandbox.env().items()]
    demo = sandbox.demo
    expires = dt.datetime.fromtimestamp(demo["client_secret_expires_at"], dt.UTC).date().isoformat()
    lines += [
        "",
        f"Demo tenant: Contoso, tenant ID {demo['tenant_id']}, verified domain {demo['tenant_domain']}",
        f'App registration: "mailgate demo", client ID {demo["client_id"]}',
        f"  client secret value {demo['client_secret']} (secret ID {demo['client_secret_id']}, expires {expires})",
        f"  redirect URI http://127.0.0.1:8000/oauth/microsoft/callback (add more with: mailgate sandbox ctl add_redirect_uri client_id={demo['client_id']} uri=...)",
        f"User: {demo['user']}, password {demo['password']}",
        f"Personal Microsoft account (tenant consumers): {demo['consumer_user']}, password {demo['consumer_password']}",
        f"Google OAuth client: ID {demo['google_client_id']}, secret {demo['google_client_secret']} (Testing)",
        f"Google user: {demo['google_user']}, password {demo['google_password']}",
        "",
        f"Identity server: {sandbox.http_url} and {sandbox.https_url}",
        f"Mail catcher: {sandbox.http_url}/sandbox/messages",
        f"Control API: {sandbox.http_url}/sandbox/control/<action> (mailgate sandbox ctl --help)",
    ]
    if sandbox.dovecot_problem:
        lines.append(f"IMAP and POP3 are off: {sandbox.dovecot_problem}")
    return "\n".join(lines)


def run_foreground(args: argparse.Namespace) -> int:
    import logging

    from mailgate.sandbox.server import Sandbox

    # One line per request (method, path, status; never the query string) on stderr.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )

    base = args.port_base
    sandbox = Sandbox(
        args.state,
        host=args.host,
        http_port=base,
        smtp_port=base + 1,
        imap_port=base + 2,
        pop3_port=base + 3,
        https_port=base + 4,
        config=args.config,
        dovecot=False if args.no_dovecot else None,
    )
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        sandbox.start()
    except OSError as exc:
        print(
            f"mailgate sandbox: cannot listen on {args.host} ports {base}-{base + 4} ({exc.strerror or exc}); "
            "choose free ports with --port-base N",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:
        from mailgate.sandbox.state import ControlError

        if isinstance(exc, ControlError):
            print(f"mailgate sandbox: {exc}", file=sys.stderr)
            return 2
        raise
    try:
        print(describe(sandbox))
        print("Press Ctrl+C to stop.", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        sandbox.stop()
    print("mailgate sandbox: stopped", flush=True)
    return 0


def main(argv: list[str]) -> int:
    """Entry point for `mailgate sandbox ...` (called before Django is set up)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "ctl":
        return run_ctl(args)
    return run_foreground(args)
