"""A real Dovecot 2.3 (Debian's dovecot-imapd / dovecot-pop3d) serving IMAP and POP3 for the sandbox.

Dovecot runs in the foreground (`dovecot -F`) from a configuration written under `<state>/dovecot`
(nothing from /etc/dovecot), on loopback with implicit TLS only, and accepts only XOAUTH2 and
OAUTHBEARER: its oauth2 passdb asks the sandbox's RFC 7662 introspection endpoint,
`<introspection_url_base>/imap` or `/pop3`, whether a token is good for that protocol.
Why each setting is there: docs/sandbox.md, "The Dovecot peer", and the numbered notes in
docs/test-peers.md (the same Dovecot behind the tests' Postfix peer).
Reference: https://doc.dovecot.org/2.3/configuration_manual/authentication/oauth2/

Differences from Exchange Online that Dovecot 2.3 cannot be configured away (Exchange's documented
exchanges: https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth):
the greetings are Exchange's, but IMAP answers "OK Logged in" / "NO [AUTHENTICATIONFAILED]
Authentication failed." (Exchange: "OK AUTHENTICATE completed." / "NO AUTHENTICATE failed."), POP3
"+OK Logged in." / "-ERR [AUTH] Authentication failed." (Exchange: "+OK User successfully
authenticated." / "-ERR Authentication failure: unknown user name or bad password."); a refused
XOAUTH2 token first gets an error challenge (`+ <base64 {"status":"401",...}>`, which Exchange does
not send, Gmail does), and the final failure comes up to 0.5 s later (Dovecot flushes failures on
a 500 ms timer even with auth_failure_delay = 0).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import itertools
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

INSTALL_HINT = (
    "Dovecot is not installed, so the sandbox has no IMAP/POP3 server. Install it with "
    "`apt-get install dovecot-imapd dovecot-pop3d` (Debian/Ubuntu; as root or with sudo) and "
    "restart the sandbox."
)
SERVICES = ("imap", "pop3")
_ADDRESS = re.compile(r"^[^/\\\x00-\x20]+@[^/\\\x00-\x20@]+$")
_counter = itertools.count()
log = logging.getLogger("mailgate.sandbox.dovecot")


class DovecotError(RuntimeError):
    """Dovecot is missing, or could not be configured or started; the message says what to do."""


def dovecot_binary() -> str | None:
    """Path of the `dovecot` executable (it lives in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")


def _libexec_dir() -> Path | None:
    for candidate in ("/usr/lib/dovecot", "/usr/libexec/dovecot"):
        path = Path(candidate)
        if (path / "imap").exists() and (path / "pop3").exists():
            return path
    return None


def dovecot_version() -> str | None:
    """The installed Dovecot's version ("2.3.19.1"), or None when it is missing."""
    binary = dovecot_binary()
    if binary is None:
        return None
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.split()[0] if out.split() else None


def dovecot_problem() -> str | None:
    """None when a usable Dovecot is installed, else what is wrong and how to fix it."""
    version = dovecot_version()
    if version is None or _libexec_dir() is None:
        return INSTALL_HINT
    if not version.startswith("2.3."):
        # Dovecot 2.4 (Debian 13) configures OAuth2 without a passdb (docs/test-peers.md note 21).
        return (
            f"Dovecot {version} is installed, but the sandbox configures Dovecot 2.3 "
            "(Debian 12's dovecot-imapd / dovecot-pop3d); IMAP and POP3 stay off."
        )
    return None


def dovecot_available() -> bool:
    """True when Dovecot 2.3 with IMAP and POP3 is installed."""
    return dovecot_problem() is None


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _bindable(host: str, port: int) -> bool:
    """True when nothing listens on host:port (the same test Dovecot's own bind makes)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        return True


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def mailbox_dir(mail_root: Path, address: str) -> Path:
    """The Maildir of `address` under `mail_root` (Dovecot's userdb home is `<mail_root>/%Lu`)."""
    address = address.strip().lower()
    if not _ADDRESS.match(address) or address.startswith("."):
        raise ValueError(f"address: {address!r} is not a mailbox address (local@domain)")
    return mail_root / address / "Maildir"


class DovecotServer:
    """Dovecot for the sandbox: start() / stop(), `imap_port` / `pop3_port`, and deliver() into a Maildir."""

    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        imap_port: int = 0,
        pop3_port: int = 0,
        *,
        cert_file: Path,
        key_file: Path,
        introspection_url_base: str,
        hostname: str = "sandbox.outlook.localhost",
        password_users: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        # Mailboxes that log in with a password (PLAIN / LOGIN, over TLS only), beside OAuth.
        self.password_users = {k.lower(): v for k, v in (password_users or {}).items()}
        # Dovecot wants addresses, and resolves names through its own DNS service
        # (docs/test-peers.md note 17): "localhost" becomes 127.0.0.1.
        self.host = "127.0.0.1" if host == "localhost" else host
        self.requested_ports = (imap_port, pop3_port)
        self.cert_file = Path(cert_file).resolve()
        self.key_file = Path(key_file).resolve()
        self.introspection_url_base = re.sub(
            r"^(https?://)localhost([:/]|$)",
            r"\g<1>127.0.0.1\2",
            introspection_url_base.rstrip("/"),
        )
        self.hostname = hostname
        self.dir = self.state_dir / "dovecot"
        self.log_path = self.dir / "dovecot.log"
        self.config_path = self.dir / "dovecot.conf"
        # base_dir and the Maildirs: under the state dir, unless Dovecot's unprivileged users
        # cannot reach it (see _runtime_root).
        self.runtime_root: Path | None = None
        self._runtime_is_temporary = False
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: tuple[int, int] | None = None
        self._lock = threading.RLock()
        self._is_root = os.geteuid() == 0
        if self._is_root:
            # Dovecot refuses uid 0 for mail processes (first_valid_uid): mail belongs to "nobody".
            nobody = pwd.getpwnam("nobody")
            self.mail_uid, self.mail_gid = nobody.pw_uid, nobody.pw_gid
        else:
            self.mail_uid, self.mail_gid = os.getuid(), os.getgid()

    @property
    def imap_port(self) -> int:
        if self._ports is None:
            raise RuntimeError("Dovecot is not started")
        return self._ports[0]

    @property
    def pop3_port(self) -> int:
        if self._ports is None:
            raise RuntimeError("Dovecot is not started")
        return self._ports[1]

    # -- configuration ----------------------------------------------------------------------

    def _users(self) -> dict[str, str]:
        if not self._is_root:
            me = pwd.getpwuid(os.getuid()).pw_name
            return {"internal": me, "group": grp.getgrgid(os.getgid()).gr_name, "login": me}
        for name in ("dovecot", "dovenull"):
            try:
                pwd.getpwnam(name)
            except KeyError as exc:
                raise DovecotError(
                    f"the system user {name!r} that Dovecot's Debian package creates is missing; "
                    "reinstall it with `apt-get install --reinstall dovecot-core`"
                ) from exc
        return {"internal": "dovecot", "group": "dovecot", "login": "dovenull"}

    def _unreachable_parent(self) -> Path | None:
        """As root, the first directory on the way to the state dir that "nobody" cannot enter."""
        if not self._is_root:
            return None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        mode = os.stat(self.state_dir).st_mode
        if not mode & 0o001:
            # Traverse only: Dovecot's users may pass through the sandbox's state dir, not list it.
            os.chmod(self.state_dir, (mode & 0o7777) | 0o001)
        for parent in self.state_dir.parents:
            if not os.stat(parent).st_mode & 0o001:
                return parent
        return None

    def _runtime_root(self) -> Path:
        """Where base_dir and the Maildirs live: the state dir, or (as root, when a parent of the
        state dir is closed to others, e.g. pytest's 0700 /tmp/pytest-of-root) a private temporary
        directory that stop() removes, since Dovecot's mail processes run as "nobody"."""
        with self._lock:
            if self.runtime_root is None:
                blocked = self._unreachable_parent()
                if blocked is None:
                    self.runtime_root = self.state_dir
                else:
                    self.runtime_root = Path(tempfile.mkdtemp(prefix="mailgate-dovecot-"))
                    os.chmod(self.runtime_root, 0o711)  # noqa: S103
                    self._runtime_is_temporary = True
                    log.warning(
                        "Dovecot's users cannot enter %s, so its mail lives in %s until the "
                        "sandbox stops; choose a state directory others may traverse to keep it",
                        blocked,
                        self.runtime_root,
                    )
            return self.runtime_root

    @property
    def mail_root(self) -> Path:
        """The directory holding one `<address>/Maildir` per mailbox."""
        return self._runtime_root() / "mail"

    @property
    def base_dir(self) -> Path:
        return self._runtime_root() / "dovecot-run"

    def _passdb_args(self, service: str) -> str:
        # Introspection (RFC 7662) by POST; Dovecot 2.3 does not look at exp on this path, so
        # the endpoint decides expiry (docs/test-peers.md note 3).
        return "\n".join(
            [
                "introspection_mode = post",
                f"introspection_url = {self.introspection_url_base}/{service}",
                "username_attribute = username",
                "active_attribute = active",
                "active_value = true",
                "force_introspection = yes",
                "timeout_msecs = 5000",
                "",
            ]
        )

    def _config(self, imap_port: int, pop3_port: int) -> str:
        users = self._users()
        chroot = "" if self._is_root else "  chroot =\n"
        lines = [
            "# Written by mailgate's sandbox (mailgate/sandbox/dovecot.py); regenerated at every start.",
            f"base_dir = {self.base_dir}",
            f"state_dir = {self._runtime_root() / 'dovecot-state'}",
            f"instance_name = mailgate-sandbox-{imap_port}",
            f"log_path = {self.log_path}",
            f"info_log_path = {self.log_path}",
            f"debug_log_path = {self.log_path}",
            'log_timestamp = "%Y-%m-%d %H:%M:%S "',
            "protocols = imap pop3",
            f"listen = {self.host}",
            f"hostname = {self.hostname}",
            f"default_internal_user = {users['internal']}",
            f"default_internal_group = {users['group']}",
            f"default_login_user = {users['login']}",
            f"first_valid_uid = {self.mail_uid}",
            f"first_valid_gid = {self.mail_gid}",
            # Implicit TLS only, like outlook.office365.com:993/995.
            "ssl = required",
            f"ssl_cert = <{self.cert_file}",
            f"ssl_key = <{self.key_file}",
            "ssl_min_protocol = TLSv1.2",
            "disable_plaintext_auth = yes",
            "auth_mechanisms = xoauth2 oauthbearer"
            + (" plain login" if self.password_users else ""),
            # Failed logins must not slow the next ones (docs/test-peers.md note 1), and no cache
            # may keep a revoked token working (note 3).
            "auth_failure_delay = 0",
            "auth_cache_size = 0",
            "auth_verbose = yes",
            "auth_username_format = %Lu",
            "mail_max_userip_connections = 1000",
            # Entra ID access tokens are long (often 1.5-3 KB, docs/test-peers.md note 9).
            "imap_max_line_length = 65536",
            f"mail_location = maildir:{self.mail_root}/%Lu/Maildir",
            *(
                [
                    "passdb {",
                    "  driver = passwd-file",
                    "  mechanisms = plain login",
                    f"  args = scheme=PLAIN username_format=%Lu {self.dir}/passwd",
                    "}",
                ]
                if self.password_users
                else []
            ),
            "userdb {",
            "  driver = static",
            f"  args = uid={self.mail_uid} gid={self.mail_gid} home={self.mail_root}/%Lu allow_all_users=yes",
            "}",
        ]
        for service, port, greeting in (
            ("imap", imap_port, "The Microsoft Exchange IMAP4 service is ready."),
            ("pop3", pop3_port, "The Microsoft Exchange POP3 service is ready."),
        ):
            lines += [
                f"protocol {service} {{",
                f"  login_greeting = {greeting}",
                "  passdb {",
                "    driver = oauth2",
                "    mechanisms = xoauth2 oauthbearer",
                f"    args = {self.dir}/oauth2-{service}.conf.ext",
                "  }",
                "}",
                f"service {service}-login {{",
                # One long-lived login process instead of fork+exec per connection.
                "  service_count = 0",
                "  process_min_avail = 1",
                f"  inet_listener {service} {{",
                "    port = 0",
                "  }",
                f"  inet_listener {service}s {{",
                f"    address = {self.host}",
                f"    port = {port}",
                "    ssl = yes",
                "  }",
                chroot,
                "}",
            ]
        # anvil's per-IP auth penalty (2, 4, 8, 15 s after failures) is not covered by
        # auth_failure_delay; without its listener there is no penalty (docs/test-peers.md note 1).
        lines += ["service anvil {", "  unix_listener anvil-auth-penalty {", "    mode = 0", "  }"]
        lines += [chroot, "}"]
        if not self._is_root:
            for service in ("ipc", "old-stats", "aggregator", "director", "imap-urlauth-login"):
                lines += [f"service {service} {{", chroot, "}"]
        return "\n".join(line for line in lines if line) + "\n"

    def write_config(self, imap_port: int, pop3_port: int) -> Path:
        """Write dovecot.conf and the passdb files for these ports; return the config path."""
        for path in (
            self.dir,
            self._runtime_root() / "dovecot-state",
            self.base_dir,
            self.mail_root,
        ):
            path.mkdir(parents=True, exist_ok=True)
        # Dovecot's unprivileged users (dovecot, dovenull, nobody) must pass through, not list.
        os.chmod(self.mail_root, 0o711)  # noqa: S103
        if self._is_root:
            # The mail processes run as mail_uid and create a new user's home on first login
            # (an empty INBOX must SELECT like Exchange's, not fail with [SERVERBUG]).
            os.chown(self.mail_root, self.mail_uid, self.mail_gid)
        for service in SERVICES:
            (self.dir / f"oauth2-{service}.conf.ext").write_text(self._passdb_args(service))
        if self.password_users:
            for user, password in self.password_users.items():
                if not _ADDRESS.match(user) or any(c in password for c in ":\n\r"):
                    raise DovecotError(
                        f"password_users: {user!r} cannot be written to a passwd file"
                    )
            passwd = "".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self.password_users.items())
            (self.dir / "passwd").write_text(passwd)
            os.chmod(self.dir / "passwd", 0o644)
        self.config_path.write_text(self._config(imap_port, pop3_port))
        return self.config_path

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, timeout: float = 15.0) -> None:
        """Start Dovecot; return once both ports accept connections, else raise DovecotError."""
        problem = dovecot_problem()
        binary = dovecot_binary()
        if problem is not None or binary is None:
            raise DovecotError(problem or INSTALL_HINT)
        if self._process is not None:
            raise RuntimeError("Dovecot is already started")
        imap_port = self.requested_ports[0] or _free_port(self.host)
        pop3_port = self.requested_ports[1] or _free_port(self.host)
        # A port someone else listens on is refused here: once Dovecot is started, a taken port
        # would still accept connections, and could pass for Dovecot's in the moment before the
        # master notices it cannot bind and exits.
        if not (_bindable(self.host, imap_port) and _bindable(self.host, pop3_port)):
            raise OSError(
                errno.EADDRINUSE,
                f"Address already in use (Dovecot, IMAP {imap_port} / POP3 {pop3_port})",
            )
        self.write_config(imap_port, pop3_port)
        self.log_path.touch()
        start_log = self.dir / "dovecot-start.log"
        with start_log.open("wb") as out:
            self._process = subprocess.Popen(
                [binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                detail = self._tail(start_log) or self._tail(self.log_path)
                self._process = None
                if "Address already in use" in detail:
                    # The same error as the sandbox's own listeners, so callers say "use --port-base".
                    raise OSError(
                        errno.EADDRINUSE,
                        f"Address already in use (Dovecot, IMAP {imap_port} / POP3 {pop3_port})",
                    )
                raise DovecotError(f"Dovecot exited at start (see {self.log_path}): {detail}")
            if (
                _port_open(self.host, imap_port)
                and _port_open(self.host, pop3_port)
                and self._process.poll() is None
            ):
                break
            if time.monotonic() >= deadline:
                self.stop()
                raise DovecotError(
                    f"Dovecot did not listen on {self.host}:{imap_port}/{pop3_port} within "
                    f"{timeout:.0f} s (see {self.log_path})"
                )
            time.sleep(0.02)
        self._ports = (imap_port, pop3_port)

    @staticmethod
    def _tail(path: Path, lines: int = 5) -> str:
        try:
            return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def _group_alive(self, pgid: int) -> bool:
        """True while a process of the group is still running (zombies do not count)."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
        return False

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop Dovecot and every process it started (its whole process group)."""
        process, self._process = self._process, None
        self._ports = None
        if process is None:
            self._drop_temporary_runtime()
            return
        pgid = process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            process.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while self._group_alive(pgid):
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                break
            time.sleep(0.02)
        self._drop_temporary_runtime()

    def _drop_temporary_runtime(self) -> None:
        with self._lock:
            if self._runtime_is_temporary and self.runtime_root is not None:
                shutil.rmtree(self.runtime_root, ignore_errors=True)
                self.runtime_root = None
                self._runtime_is_temporary = False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> DovecotServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- delivery ----------------------------------------------------------------------------

    def _make_maildir(self, maildir: Path) -> None:
        created = []
        for path in (maildir.parent, maildir, maildir / "tmp", maildir / "new", maildir / "cur"):
            if not path.exists():
                path.mkdir(mode=0o700)
                created.append(path)
        if self._is_root:
            for path in created:
                os.chown(path, self.mail_uid, self.mail_gid)

    def deliver(self, address: str, raw: bytes) -> None:
        """Put `raw` into the INBOX of `address` (Maildir: write to tmp/, then rename into new/)."""
        maildir = mailbox_dir(self.mail_root, address)
        with self._lock:
            self.mail_root.mkdir(parents=True, exist_ok=True)
            self._make_maildir(maildir)
        now = time.time()
        name = (
            f"{int(now)}.M{int(now % 1 * 1_000_000)}P{os.getpid()}Q{next(_counter)}"
            f".{self.hostname},S={len(raw)}"
        )
        tmp = maildir / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        if self._is_root:
            os.chown(tmp, self.mail_uid, self.mail_gid)
        os.rename(tmp, maildir / "new" / name)
