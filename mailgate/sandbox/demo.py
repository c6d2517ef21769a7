"""`mailgate demo`: the sandbox plus `mailgate run`, with demo mail servers ready to connect in a browser."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from mailgate.sandbox.cli import _host, _port_base

DEFAULT_STATE = Path("var/demo")
ADMIN_EMAIL = "admin@demo.example"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailgate demo",
        description=(
            "Start the offline sandbox and mailgate together, with an Outlook and a Gmail demo mail "
            "server, so the whole Connect flow can be followed in a browser without a cloud account."
        ),
    )
    parser.add_argument(
        "--host", type=_host, default="127.0.0.1", help="loopback address (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="mailgate's console port (default 8000)"
    )
    parser.add_argument(
        "--port-base", type=_port_base, default=8400, metavar="N", help="sandbox ports N..N+4"
    )
    parser.add_argument(
        "--state", type=Path, default=DEFAULT_STATE, metavar="DIR", help="default ./var/demo"
    )
    return parser


def _admin_password(state_dir: Path) -> str:
    """The demo administrator's password, made once and kept (mode 0600) for later runs."""
    path = state_dir / "demo-admin.json"
    if path.exists():
        return str(json.loads(path.read_text())["password"])
    password = "Demo-" + secrets.token_urlsafe(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"email": ADMIN_EMAIL, "password": password}, fh)
    return password


def _mailgate(
    args: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailgate.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _date(epoch: object) -> str:
    """The secret's expiry as the form's YYYY-MM-DD (UTC)."""
    seconds = float(epoch) if isinstance(epoch, int | float | str) else time.time() + 180 * 86400
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date().isoformat()


def _demo_servers(
    sandbox: object, demo: dict[str, str], port_base: int
) -> list[tuple[list[str], str]]:
    """`servers add` argument lists, each with the secret to send on standard input."""
    common = [
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        str(port_base + 1),
        "--security",
        "starttls",
    ]
    incoming = [
        "--incoming",
        "imap",
        "--incoming-host",
        "127.0.0.1",
        "--incoming-port",
        str(port_base + 2),
    ]
    return [
        (
            [
                "servers",
                "add",
                "--name",
                "Demo Outlook",
                "--auth",
                "outlook",
                "--username",
                demo["user"],
                "--client-id",
                demo["client_id"],
                "--tenant",
                demo["tenant_domain"],
                "--client-secret-expires-on",
                _date(demo.get("client_secret_expires_at")),
                "--from-filter",
                demo["user"],
                "--client-secret-stdin",
                *common,
                *incoming,
            ],
            demo["client_secret"],
        ),
        (
            [
                "servers",
                "add",
                "--name",
                "Demo Gmail",
                "--auth",
                "gmail",
                "--username",
                demo["google_user"],
                "--client-id",
                demo["google_client_id"],
                "--from-filter",
                demo["google_user"],
                "--client-secret-stdin",
                *common,
            ],
            demo["google_client_secret"],
        ),
    ]


def send_command(sender: str) -> str:
    """A ready `mailgate send` for the demo mailbox (the sandbox accepts any recipient)."""
    return (
        f"uv run mailgate send --from {sender} --to someone@example.net "
        "--subject 'Hello from mailgate' --body 'It works.' --wait"
    )


def main(argv: list[str]) -> int:
    """Entry point for `mailgate demo`."""
    args = build_parser().parse_args(argv)
    from mailgate.sandbox.cli import describe
    from mailgate.sandbox.server import Sandbox

    state_dir: Path = args.state.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    base = args.port_base
    sandbox = Sandbox(
        state_dir / "sandbox",
        host=args.host,
        http_port=base,
        smtp_port=base + 1,
        imap_port=base + 2,
        pop3_port=base + 3,
        https_port=base + 4,
        dovecot=None,
    )
    try:
        sandbox.start()
    except OSError as exc:
        print(
            f"mailgate demo: cannot listen on ports {base}-{base + 4} ({exc.strerror or exc}); use --port-base N",
            file=sys.stderr,
        )
        return 1
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    child: subprocess.Popen[bytes] | None = None
    try:
        demo = sandbox.demo
        public_url = f"http://{args.host}:{args.port}"
        for provider in ("microsoft", "google"):
            uri = f"{public_url}/oauth/{provider}/callback"
            if provider == "microsoft":
                sandbox.control.add_redirect_uri(demo["client_id"], uri)
            else:
                sandbox.control.call(
                    "update_google_project", client_id=demo["google_client_id"], redirect_uri=uri
                )
        password = _admin_password(state_dir)
        env = {
            **os.environ,
            **sandbox.env(),
            # The browser visits the login pages: plain HTTP on loopback spares it a certificate
            # warning (mailgate accepts http:// identity URLs for loopback hosts only).
            "MAILGATE_MICROSOFT_LOGIN_URL": sandbox.http_url,
            "MAILGATE_GOOGLE_AUTH_URL": f"{sandbox.http_url}/o/oauth2/v2/auth",
            "MAILGATE_GOOGLE_TOKEN_URL": f"{sandbox.http_url}/token",
            "MAILGATE_GOOGLE_REVOKE_URL": f"{sandbox.http_url}/revoke",
            "MAILGATE_HOME": str(state_dir / "mailgate-home"),
            "MAILGATE_PUBLIC_URL": public_url,
            "MAILGATE_ADMIN_EMAIL": ADMIN_EMAIL,
            "MAILGATE_ADMIN_PASSWORD": password,
        }
        env.pop("MAILGATE_DATABASE_URL", None)
        print(describe(sandbox))
        fresh = not (state_dir / "mailgate-home").exists()
        migrate = _mailgate(["migrate", "--noinput"], env)
        if migrate.returncode != 0:
            print(f"mailgate demo: migrations failed:\n{migrate.stderr}", file=sys.stderr)
            return 1
        # On a later run the demo servers exist already (`servers add` would refuse the names).
        existing = "" if fresh else _mailgate(["servers", "list", "--json"], env).stdout
        for server_args, secret in _demo_servers(sandbox, demo, base):
            name = server_args[3]
            if f'"{name}"' in existing:
                continue
            added = _mailgate(server_args, env, stdin=secret + "\n")
            if added.returncode != 0:
                print(
                    f"mailgate demo: could not create {name!r} ({added.stderr.strip()}); add it in the console with:"
                    f" {' '.join(a for a in server_args if a != '--client-secret-stdin')} and the secret above",
                    file=sys.stderr,
                )
            else:
                print(f"Mail server {name!r} created.")
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailgate.cli",
                "run",
                "--host",
                args.host,
                "--port",
                str(args.port),
            ],
            env=env,
        )
        print(
            "\n"
            f"mailgate: {public_url}  (sign in as {ADMIN_EMAIL}, password {password})\n"
            "Then: Settings › Technical › Mail Server › Mail Servers › Demo Outlook ›"  # noqa: RUF001
            " Connect your Outlook account; sign in at the sandbox as"
            f" {demo['user']} / {demo['password']} and press Accept.\n"
            "\nTo send from another terminal (the demo's database is in its own folder):\n"
            f"  export MAILGATE_HOME={state_dir / 'mailgate-home'}\n"
            f"  {send_command(demo['user'])}\n"
            "\nPress Ctrl+C to stop.",
            flush=True,
        )
        while not stop.wait(0.5):
            if child.poll() is not None:
                print(
                    f"mailgate demo: `mailgate run` exited with status {child.returncode}",
                    file=sys.stderr,
                )
                return 1
        return 0
    finally:
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)
        sandbox.stop()
