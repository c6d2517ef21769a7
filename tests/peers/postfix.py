"""Postfix 3.7 submission with Dovecot 2.3 SASL on loopback: an independent real SMTP server for tests.

`PostfixDovecotPeer` writes a private configuration (nothing from /etc/postfix or /etc/dovecot) into a
fresh directory, starts Dovecot as the SASL authority and Postfix as the SMTP server, and stops every
process it started. Postfix offers submission with STARTTLS (AUTH only after TLS) and submissions
with implicit TLS; Dovecot checks OAuth 2.0 bearer tokens (XOAUTH2 / OAUTHBEARER) against an RFC 7662
introspection URL and passwords (PLAIN / LOGIN) against a passwd-file. Every accepted message is
delivered by Postfix's virtual(8) agent into one Maildir, `<mail_root>/Maildir/new/`, with a
Delivered-To header naming the recipient.

Postfix needs root (`postfix: fatal: the postfix command is reserved for the superuser`): CI runs as
root; elsewhere `peer_problem()` says so and the tests that need the peer fail with that message.
Notes on making them start fast and behave (numbered as cited below): docs/test-peers.md.
Reference: https://www.postfix.org/SASL_README.html#server_dovecot
Reference: https://doc.dovecot.org/2.3/configuration_manual/authentication/oauth2/
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import grp
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from email.message import EmailMessage
from pathlib import Path

from mailgate.sandbox.ca import SandboxCA

CONF_DIR = Path(__file__).parent / "conf"
HOST = "127.0.0.1"
HOSTNAME = "mail.peer.test"
# Queue layout with owners and modes as in /etc/postfix/postfix-files; creating it up front (plus the
# quick-start marker) spares `postfix start` its ~2 s post-install check (docs/test-peers.md, note 8).
QUEUE_DIRS = (
    "active",
    "bounce",
    "corrupt",
    "defer",
    "deferred",
    "flush",
    "hold",
    "incoming",
    "saved",
    "trace",
    "private",
)
_PLACEHOLDER = re.compile(r"@([A-Z0-9_]+)@")


class PeerError(RuntimeError):
    """The peer cannot run here or failed to start; the message says why and what to do."""


def _binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def peer_problem() -> str | None:
    """None when Postfix and Dovecot 2.3 can run as the peer here, else what is missing and the fix."""
    if os.geteuid() != 0:
        return (
            "the Postfix test peer needs root (Postfix refuses to start otherwise); run the tests "
            "as root, as CI does"
        )
    missing = [name for name in ("postfix", "dovecot", "doveconf") if _binary(name) is None]
    if missing:
        return (
            f"{', '.join(missing)} not installed: run scripts/install-test-deps.sh as root "
            "(apt-get install postfix dovecot-core)"
        )
    for user in ("postfix", "dovecot", "dovenull", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return (
                f"the system user {user!r} is missing: reinstall the postfix/dovecot-core packages"
            )
    dovecot = _binary("dovecot")
    assert dovecot is not None
    version = subprocess.run(
        [dovecot, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.strip()
    if not version.startswith("2.3."):
        # Dovecot 2.4 configures OAuth 2.0 without a passdb (docs/test-peers.md, note 21).
        return f"Dovecot {version or '?'} is installed; the peer's configuration is for Dovecot 2.3"
    return None


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all bound at once, so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _unix_socket_open(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; the result of the last check."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        time.sleep(interval)
    return True


def _group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies do not count: PID 1 here reaps lazily, note 14)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _stop_group(pgid: int, timeout: float) -> None:
    """SIGTERM a process group, then SIGKILL whatever is left after `timeout` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if not wait_until(lambda: not _group_members(pgid), timeout):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        wait_until(lambda: not _group_members(pgid), timeout)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def ssha512(password: str) -> str:
    """Dovecot's {SSHA512} scheme: base64(SHA-512(password + salt) + salt)."""
    # Reference: https://doc.dovecot.org/2.3/configuration_manual/authentication/password_schemes/
    salt = os.urandom(16)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode()


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_certificates(run_dir: Path, names: Iterable[str]) -> SandboxCA:
    """The peer's own CA (not the sandbox's) and a server certificate for `names`, under run_dir/tls."""
    return SandboxCA(
        run_dir, names=list(names), label="mailgate test peer CA", server_name=HOSTNAME
    )


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace every @NAME@ of a template in tests/peers/conf with values[NAME]; all must be given."""
    text = (CONF_DIR / template).read_text()

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise PeerError(f"{template}: no value for @{name}@")
        return values[name]

    return _PLACEHOLDER.sub(substitute, text)


class PostfixDovecotPeer:
    """Postfix submission + Dovecot SASL in a private directory: start(), stop(), and the Maildirs.

    `introspection_url` is the RFC 7662 endpoint Dovecot asks about each bearer token (a live token
    answers {"active": true, "username": <mailbox>}); `password_users` maps mailbox to password for
    PLAIN / LOGIN. Use as a context manager.
    """

    def __init__(
        self,
        *,
        introspection_url: str,
        password_users: Mapping[str, str] | None = None,
        auth_debug: bool = False,
        smtputf8: bool = False,
    ) -> None:
        # Dovecot's HTTP client resolves names through its own DNS service (docs/test-peers.md, note 17).
        self.introspection_url = re.sub(
            r"^(https?://)localhost([:/]|$)", r"\g<1>127.0.0.1\2", introspection_url
        )
        self.password_users = {k.lower(): v for k, v in (password_users or {}).items()}
        self.auth_debug = auth_debug
        # smtputf8_enable: off by default, as a server that does not offer SMTPUTF8 (RFC 6531).
        self.smtputf8 = smtputf8
        self.host = HOST
        self.run_dir: Path | None = None
        self.submission_port = 0
        self.submissions_port = 0
        self._dovecot: subprocess.Popen[bytes] | None = None
        self._postfix_pgid: int | None = None
        nobody = pwd.getpwnam("nobody")
        self.mail_uid, self.mail_gid = nobody.pw_uid, nobody.pw_gid

    # -- paths -------------------------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.run_dir is None:
            raise RuntimeError("the peer is not started")
        return self.run_dir.joinpath(*parts)

    @property
    def ca_file(self) -> Path:
        """The PEM file of the CA that issued Postfix's certificate (add it to SSL_CERT_FILE)."""
        return self._path("tls", "ca.pem")

    @property
    def mail_root(self) -> Path:
        return self._path("mail")

    @property
    def postfix_config(self) -> Path:
        return self._path("postfix", "etc")

    @property
    def dovecot_log(self) -> Path:
        return self._path("logs", "dovecot.log")

    @property
    def postfix_log(self) -> Path:
        return self._path("logs", "postfix.log")

    @property
    def _auth_socket(self) -> Path:
        return self._path("dovecot", "auth-client")

    @property
    def _master_pid_file(self) -> Path:
        return self._path("postfix", "spool", "pid", "master.pid")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, timeout: float = 20.0) -> PostfixDovecotPeer:
        """Configure and start Dovecot, then Postfix; return once both answer, else raise PeerError."""
        problem = peer_problem()
        if problem is not None:
            raise PeerError(problem)
        if self.run_dir is not None:
            raise RuntimeError("the peer is already started")
        # Not under pytest's tmp_path: its parents are 0700, and postfix, dovecot and nobody must
        # traverse this directory (docs/test-peers.md, note 11).
        self.run_dir = Path(tempfile.mkdtemp(prefix="mailgate-peer-"))
        os.chmod(self.run_dir, 0o755)
        try:
            self.submission_port, self.submissions_port = _free_ports(2)
            self._configure()
            self._start_dovecot(timeout)
            self.start_postfix(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _values(self) -> dict[str, str]:
        return {
            "RUN": str(self.run_dir),
            "HOSTNAME": HOSTNAME,
            "SYSLOG_NAME": f"postfix-peer-{self.submission_port}",
            "SUBMISSION_PORT": str(self.submission_port),
            "SUBMISSIONS_PORT": str(self.submissions_port),
            "MAIL_UID": str(self.mail_uid),
            "MAIL_GID": str(self.mail_gid),
            "INTROSPECTION_URL": self.introspection_url,
            "AUTH_DEBUG": "yes" if self.auth_debug else "no",
            "SMTPUTF8": "yes" if self.smtputf8 else "no",
        }

    def _configure(self) -> None:
        values = self._values()
        for folder in ("logs", "dovecot/run", "dovecot/state", "postfix/etc", "mail"):
            self._path(folder).mkdir(parents=True, exist_ok=True)
        make_certificates(self._path(), [HOST, "localhost", HOSTNAME])
        # virtual(8) writes the Maildirs as nobody and creates the per-recipient folders itself.
        os.chown(self.mail_root, self.mail_uid, self.mail_gid)

        dovecot = self._path("dovecot")
        (dovecot / "dovecot.conf").write_text(render("dovecot.conf.in", values))
        (dovecot / "oauth2.conf.ext").write_text(render("oauth2.conf.ext.in", values))
        users = "".join(
            f"{name}:{ssha512(password)}::::::\n" for name, password in self.password_users.items()
        )
        users_file = dovecot / "users"
        _write(users_file, users.encode(), 0o640)
        os.chown(users_file, 0, grp.getgrnam("dovecot").gr_gid)

        etc = self.postfix_config
        for template, name in (
            ("main.cf.in", "main.cf"),
            ("master.cf.in", "master.cf"),
        ):
            path = etc / name
            path.write_text(render(template, values))
            # Postfix re-reads a configuration file younger than ~2 s every 300 ms before using
            # it (a guard against half-written files): backdate it (docs/test-peers.md, note 7).
            old = time.time() - 60
            os.utime(path, (old, old))
        postfix = pwd.getpwnam("postfix")
        root_gid = 0
        postdrop_gid = grp.getgrnam("postdrop").gr_gid
        spool = self._path("postfix", "spool")
        spool.mkdir(mode=0o755)
        for name in QUEUE_DIRS:
            _mkdir(spool / name, 0o700, postfix.pw_uid, root_gid)
        _mkdir(spool / "maildrop", 0o730, postfix.pw_uid, postdrop_gid)
        _mkdir(spool / "public", 0o710, postfix.pw_uid, postdrop_gid)
        _mkdir(spool / "pid", 0o755, 0, root_gid)
        _mkdir(self._path("postfix", "data"), 0o700, postfix.pw_uid, root_gid)

    def _start_dovecot(self, timeout: float) -> None:
        binary = _binary("dovecot")
        assert binary is not None
        config = self._path("dovecot", "dovecot.conf")
        check = subprocess.run(
            [_binary("doveconf") or "doveconf", "-c", str(config), "-n"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check.returncode != 0:
            raise PeerError(f"doveconf rejected {config}: {check.stderr.strip()}")
        start_log = self._path("logs", "dovecot-start.log")
        with start_log.open("wb") as out:
            # Foreground master in its own process group: stop() ends the whole group.
            self._dovecot = subprocess.Popen(
                [binary, "-F", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self._dovecot
        ready = wait_until(
            lambda: process.poll() is not None or _unix_socket_open(self._auth_socket), timeout
        )
        if process.poll() is not None:
            raise PeerError(
                f"Dovecot exited at start:\n{_tail(start_log) or _tail(self.dovecot_log)}"
            )
        if not ready:
            raise PeerError(
                f"Dovecot's auth socket {self._auth_socket} did not answer within {timeout:.0f} s:\n"
                f"{_tail(self.dovecot_log)}"
            )

    def start_postfix(self, *, timeout: float = 20.0) -> None:
        """Start Postfix (again) on the same ports; return once submission accepts connections."""
        if self._postfix_pgid is not None:
            raise RuntimeError("Postfix is already running")
        # postfix-script removes the marker at each start; without it a restart runs the slow
        # integrity checks again (docs/test-peers.md, note 8).
        self._path("postfix", "spool", "quick-start").touch()
        command = ["postfix", "-c", str(self.postfix_config), "start"]
        started = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
        if started.returncode != 0:
            # postfix prints its reasons only to a tty or to postlogd, which is not up yet
            # (docs/test-peers.md, note 5): run it once more under script(1) to capture them.
            again = subprocess.run(
                ["script", "-qc", " ".join(command), "/dev/null"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            raise PeerError(
                f"postfix start failed: {(started.stderr + again.stdout).strip()}\n"
                f"{_tail(self.postfix_log)}"
            )
        if not wait_until(lambda: self._read_master_pid() is not None, timeout):
            raise PeerError(f"Postfix wrote no {self._master_pid_file} within {timeout:.0f} s")
        # The master calls setsid(): its process group holds every Postfix daemon it starts.
        self._postfix_pgid = self._read_master_pid()
        ports = (self.submission_port, self.submissions_port)
        if not wait_until(lambda: all(_port_open(p) for p in ports), timeout):
            raise PeerError(
                f"Postfix did not listen on {HOST}:{ports} within {timeout:.0f} s:\n"
                f"{_tail(self.postfix_log)}"
            )

    def _read_master_pid(self) -> int | None:
        try:
            pid = int(self._master_pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _group_members(pid) else None

    def stop_postfix(self, *, timeout: float = 15.0) -> None:
        """Stop Postfix (master and every daemon); Dovecot keeps running. Safe to call twice."""
        pgid, self._postfix_pgid = self._postfix_pgid, None
        if pgid is None and self.run_dir is not None:
            # A start that failed half-way may have left a master behind.
            pgid = self._read_master_pid()
        if pgid is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                ["postfix", "-c", str(self.postfix_config), "stop"],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        if not wait_until(lambda: not _group_members(pgid), timeout):
            _stop_group(pgid, timeout)

    def stop(self, *, timeout: float = 15.0) -> None:
        """Stop Postfix and Dovecot and remove the peer's directory; safe to call twice."""
        if self.run_dir is not None:
            self.stop_postfix(timeout=timeout)
        process, self._dovecot = self._dovecot, None
        if process is not None:
            _stop_group(process.pid, timeout)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout)
        run_dir, self.run_dir = self.run_dir, None
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)

    def process_groups(self) -> list[int]:
        """The process groups of the running Postfix master and Dovecot master."""
        groups = [self._postfix_pgid, self._dovecot.pid if self._dovecot else None]
        return [group for group in groups if group]

    def processes(self) -> list[int]:
        """Live processes started by this peer (every member of its process groups)."""
        return [pid for group in self.process_groups() for pid in _group_members(group)]

    @property
    def postfix_running(self) -> bool:
        return self._postfix_pgid is not None

    def __enter__(self) -> PostfixDovecotPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what arrived ------------------------------------------------------------------------

    @property
    def maildir(self) -> Path:
        """The one Maildir virtual(8) delivers every recipient into."""
        return self.mail_root / "Maildir"

    def message_files(self) -> list[Path]:
        return sorted(
            path
            for folder in ("new", "cur")
            if (self.maildir / folder).is_dir()
            for path in (self.maildir / folder).iterdir()
        )

    def messages(self, recipient: str | None = None) -> list[EmailMessage]:
        """Delivered messages (all, or those for `recipient` by their Delivered-To), oldest first."""
        parsed = []
        for path in self.message_files():
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            delivered_to = str(message.get("Delivered-To", "")).strip().lower()
            if recipient is None or delivered_to == recipient.strip().lower():
                parsed.append(message)
        return parsed

    def wait_for_messages(
        self, recipient: str, count: int, *, timeout: float = 10.0
    ) -> list[EmailMessage]:
        """The messages for `recipient` once there are at least `count` (bounded by `timeout`)."""
        if not wait_until(lambda: len(self.messages(recipient)) >= count, timeout, interval=0.05):
            found = len(self.messages(recipient))
            raise AssertionError(
                f"{found} of {count} messages for {recipient} reached {self.maildir} within "
                f"{timeout:.0f} s; Postfix log:\n{_tail(self.postfix_log, 15)}"
            )
        return self.messages(recipient)

    def postfix_log_lines(self, pattern: str) -> list[str]:
        """Lines of Postfix's log matching a regular expression."""
        text = self.postfix_log.read_text(errors="replace") if self.postfix_log.exists() else ""
        return [line for line in text.splitlines() if re.search(pattern, line)]

    def wait_for_log_lines(self, pattern: str, *, timeout: float = 10.0) -> list[str]:
        """Postfix's log lines matching `pattern`, once there is one (postlogd writes the log in
        another process, a little after the SMTP reply); an AssertionError with the log's tail when
        none comes within `timeout`."""
        if not wait_until(lambda: bool(self.postfix_log_lines(pattern)), timeout, interval=0.05):
            raise AssertionError(
                f"no line of Postfix's log matched {pattern!r} within {timeout:.0f} s:\n"
                f"{_tail(self.postfix_log, 15)}"
            )
        return self.postfix_log_lines(pattern)

    def dovecot_log_text(self) -> str:
        return self.dovecot_log.read_text(errors="replace") if self.dovecot_log.exists() else ""

    def wait_for_dovecot_log(self, text: str, *, start: int = 0, timeout: float = 10.0) -> str:
        """Dovecot's log from offset `start`, once it contains `text` (bounded by `timeout`)."""
        if not wait_until(lambda: text in self.dovecot_log_text()[start:], timeout, interval=0.05):
            raise AssertionError(
                f"{text!r} did not appear in Dovecot's log within {timeout:.0f} s:\n"
                f"{_tail(self.dovecot_log, 15)}"
            )
        return self.dovecot_log_text()[start:]


def _mkdir(path: Path, mode: int, uid: int, gid: int) -> None:
    path.mkdir(mode=mode)
    os.chmod(path, mode)
    os.chown(path, uid, gid)


def trust_bundle(path: Path, *ca_files: Path) -> Path:
    """Write one PEM file trusting every given CA (for SSL_CERT_FILE); return its path."""
    path.write_bytes(b"".join(Path(ca).read_bytes().rstrip(b"\n") + b"\n" for ca in ca_files))
    return path
