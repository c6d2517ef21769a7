"""`Sandbox`: the identity server (HTTP + HTTPS), the SMTP server and Dovecot, started and stopped in-process."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from mailgate.sandbox.app import SandboxApp
from mailgate.sandbox.ca import SandboxCA
from mailgate.sandbox.control import ControlClient
from mailgate.sandbox.state import SandboxState

log = logging.getLogger("mailgate.sandbox")

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket; werkzeug would print and exit on a busy port, this raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class _QuietHandler(WSGIRequestHandler):
    """Logs method, path and status only: query strings can carry codes and tokens."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        log.info("%s %s %s", self.command, path, code)

    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug(message, *args)


class Sandbox:
    """Everything `mailgate sandbox` runs; port 0 picks a free port. Use as a context manager."""

    def __init__(
        self,
        state_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        https_port: int = 0,
        smtp_port: int = 0,
        imap_port: int = 0,
        pop3_port: int = 0,
        config: Path | None = None,
        demo: bool = True,
        smtp: bool = True,
        dovecot: bool | None = False,
    ) -> None:
        if not is_loopback(host):
            raise ValueError(
                f"host {host!r} is not a loopback address: the sandbox listens on 127.0.0.1, ::1 or localhost only"
            )
        self.state_dir = Path(state_dir)
        self.host = host
        self.ports = {
            "http": http_port,
            "https": https_port,
            "smtp": smtp_port,
            "imap": imap_port,
            "pop3": pop3_port,
        }
        self.config = config
        self.demo_enabled = demo
        self.smtp_enabled = smtp
        # None: start Dovecot when installed; True: require it; False: do not start it.
        self.dovecot_wanted = dovecot
        self.state: SandboxState | None = None
        self.ca: SandboxCA | None = None
        self.app: SandboxApp | None = None
        self.smtp: Any = None
        self.dovecot: Any = None
        self.store: Any = None
        self.dovecot_problem = ""
        self._servers: list[BaseWSGIServer] = []
        self._threads: list[threading.Thread] = []
        self._control: ControlClient | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Sandbox:
        self.state = SandboxState(self.state_dir, config=self.config, demo=self.demo_enabled)
        self.ca = SandboxCA(self.state_dir)
        self.app = SandboxApp(self.state)
        try:
            for name, context in (("http", None), ("https", self.ca.server_context())):
                listener = _listen(self.host, self.ports[name])
                try:
                    server = make_server(
                        self.host,
                        self.ports[name],
                        self.app,
                        threaded=True,
                        request_handler=_QuietHandler,
                        ssl_context=context,
                        fd=listener.fileno(),
                    )
                finally:
                    # werkzeug works on its own duplicate of the descriptor.
                    listener.close()
                self.ports[name] = server.socket.getsockname()[1]
                thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    name=f"sandbox-{name}",
                    daemon=True,
                )
                thread.start()
                self._servers.append(server)
                self._threads.append(thread)
            self._start_mail()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_mail(self) -> None:
        assert self.state is not None and self.ca is not None and self.app is not None
        delivery = None
        if self.dovecot_wanted is not False:
            try:
                from mailgate.sandbox import dovecot as dovecot_module
            except ImportError:
                dovecot_module = None  # type: ignore[assignment]
            if dovecot_module is None:
                self.dovecot_problem = (
                    "this mailgate has no Dovecot support (mailgate/sandbox/dovecot.py)"
                )
                if self.dovecot_wanted:
                    raise RuntimeError(self.dovecot_problem)
            elif dovecot_module.dovecot_available():
                self.dovecot = dovecot_module.DovecotServer(
                    self.state_dir,
                    self.host,
                    self.ports["imap"],
                    self.ports["pop3"],
                    cert_file=self.ca.cert_file,
                    key_file=self.ca.key_file,
                    introspection_url_base=f"{self.http_url}/sandbox/introspect",
                )
                self.dovecot.start()
                self.ports["imap"] = self.dovecot.imap_port
                self.ports["pop3"] = self.dovecot.pop3_port
                delivery = self.dovecot
            elif self.dovecot_wanted:
                raise RuntimeError(dovecot_module.INSTALL_HINT)
            else:
                self.dovecot_problem = dovecot_module.INSTALL_HINT
        if self.smtp_enabled:
            from mailgate.sandbox.mailstore import FileMailStore
            from mailgate.sandbox.smtp import ExchangeSMTPServer

            self.store = FileMailStore(self.state_dir, clock=self.state.now)
            self.smtp = ExchangeSMTPServer(
                self.host,
                self.ports["smtp"],
                self.ca.server_context(),
                self.state.policy,
                self.store,
                delivery,
            )
            self.smtp.start()
            self.ports["smtp"] = self.smtp.port
        self.app.store = self.store
        self.app.delivery = delivery

    def stop(self) -> None:
        """Stop every server this sandbox started; safe to call twice."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.app is not None:
            self.app.stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._servers.clear()
        self._threads.clear()
        if self.smtp is not None:
            self.smtp.stop()
            self.smtp = None
        if self.dovecot is not None:
            self.dovecot.stop()
            self.dovecot = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.ports['http']}"

    @property
    def https_url(self) -> str:
        return f"https://{_url_host(self.host)}:{self.ports['https']}"

    @property
    def login_url(self) -> str:
        """The value for MAILGATE_MICROSOFT_LOGIN_URL (HTTPS: MSAL refuses plain-http authorities)."""
        return self.https_url

    @property
    def google_auth_url(self) -> str:
        return f"{self.https_url}/o/oauth2/v2/auth"

    @property
    def google_token_url(self) -> str:
        return f"{self.https_url}/token"

    @property
    def google_revoke_url(self) -> str:
        return f"{self.https_url}/revoke"

    @property
    def ca_file(self) -> Path:
        assert self.ca is not None, "start the sandbox first"
        return self.ca.ca_file

    def address(self, service: str) -> str:
        """host:port of "smtp", "imap" or "pop3"."""
        return f"{self.host}:{self.ports[service]}"

    @property
    def control(self) -> ControlClient:
        if self._control is None:
            self._control = ControlClient(self.http_url)
        return self._control

    @property
    def demo(self) -> dict[str, Any]:
        """The demo tenant, app, users and Google client, with their secrets."""
        assert self.state is not None, "start the sandbox first"
        return self.state.demo()

    def env(self) -> dict[str, str]:
        """The settings that point mailgate at this sandbox."""
        return {
            "MAILGATE_MICROSOFT_LOGIN_URL": self.login_url,
            "MAILGATE_GOOGLE_AUTH_URL": self.google_auth_url,
            "MAILGATE_GOOGLE_TOKEN_URL": self.google_token_url,
            "MAILGATE_GOOGLE_REVOKE_URL": self.google_revoke_url,
            "SSL_CERT_FILE": str(self.ca_file),
            "MAILGATE_SANDBOX_SMTP": self.address("smtp"),
            "MAILGATE_SANDBOX_IMAP": self.address("imap"),
            "MAILGATE_SANDBOX_POP3": self.address("pop3"),
        }
