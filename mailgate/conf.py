"""Strict parsing of mailgate's environment settings."""

from __future__ import annotations

import base64
import ipaddress
import math
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography.fernet import Fernet


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable and the expected form."""

    def __init__(self, variable: str, problem: str, expected: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {problem}. Expected {expected}.")


LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}

# The real identity endpoints; anything else (the sandbox, a proxy) is worth a word in production.
IDENTITY_DEFAULTS = {
    "MAILGATE_MICROSOFT_LOGIN_URL": "https://login.microsoftonline.com",
    "MAILGATE_GOOGLE_AUTH_URL": "https://accounts.google.com/o/oauth2/v2/auth",
    "MAILGATE_GOOGLE_TOKEN_URL": "https://oauth2.googleapis.com/token",
}


def is_loopback_host(host: str | None) -> bool:
    """True for localhost names and 127.0.0.0/8 / ::1 addresses."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_http_url(variable: str, value: str, *, allow_path: bool = True) -> str:
    """Validate an http(s) URL; http:// is accepted only for loopback hosts."""
    value = value.strip()
    parts = urlsplit(value)
    expected = "an https:// URL (http:// only for 127.0.0.1 / localhost)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(variable, f"{value!r} is not an absolute URL", expected)
    if parts.query or parts.fragment:
        raise SettingsError(variable, "a query string or fragment is not allowed", expected)
    if not allow_path and parts.path not in ("", "/"):
        raise SettingsError(variable, "a path is not allowed", "scheme://host[:port]")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise SettingsError(variable, f"bad port in {value!r}", expected) from exc
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise SettingsError(
            variable, f"plain http is only accepted for loopback, not {parts.hostname}", expected
        )
    return value.rstrip("/")


def listen_url(host: str, port: int) -> str:
    """The URL a browser on this machine opens for a console listening on host:port.

    A wildcard address (0.0.0.0, ::) is reached as 127.0.0.1; an IPv6 address is bracketed.
    """
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def parse_public_url(value: str) -> str:
    """MAILGATE_PUBLIC_URL may be http on any host (a warning is shown in the console)."""
    variable = "MAILGATE_PUBLIC_URL"
    value = value.strip()
    parts = urlsplit(value)
    expected = "a base URL such as https://mail.example.com or http://127.0.0.1:8000"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(variable, f"{value!r} is not an absolute http(s) URL", expected)
    if parts.query or parts.fragment:
        raise SettingsError(variable, "a query string or fragment is not allowed", expected)
    try:
        parts.port  # noqa: B018
    except ValueError as exc:
        raise SettingsError(variable, f"bad port in {value!r}", expected) from exc
    return value.rstrip("/")


@dataclass(frozen=True)
class Database:
    engine: str
    name: str
    user: str = ""
    password: str = ""
    host: str = ""
    port: str = ""
    options: dict[str, str] = field(default_factory=dict)

    def as_django(self) -> dict[str, Any]:
        # Connections are kept between requests and worker steps (checked before reuse): opening
        # one (PostgreSQL starts a backend, SQLite runs the pragmas below) cost more web CPU than
        # the rest of a POST /api/v1/messages.
        db: dict[str, Any] = {
            "ENGINE": self.engine,
            "NAME": self.name,
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
        if self.engine.endswith("postgresql"):
            db.update(USER=self.user, PASSWORD=self.password, HOST=self.host, PORT=self.port)
            db["OPTIONS"] = dict(self.options)
        else:
            # WAL lets the worker and the web requests read while one of them writes. FULL syncs
            # the WAL at every commit: what was acknowledged (API 201, relay 250, a fetched
            # message before the mail server is told to flag, move or delete it) survives a power
            # loss, as with PostgreSQL's default synchronous_commit; NORMAL could lose the last
            # commits (about 0.15 ms a commit more on this project's test machines).
            db["OPTIONS"] = {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
            }
            # Tests run on an in-memory database, one per test process (said outright: the engine
            # is not Django's own sqlite3, so pytest-django would otherwise derive a file name from
            # the path for each xdist worker).
            db["TEST"] = {"NAME": ":memory:"}
        return db


def parse_database_url(value: str, home: Path) -> Database:
    variable = "MAILGATE_DATABASE_URL"
    expected = "sqlite:///relative/or//absolute/path.sqlite3 or postgresql://user:password@host:5432/dbname"
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme == "sqlite":
        path = parts.path
        if parts.netloc:
            raise SettingsError(variable, "a sqlite URL has no host", expected)
        if path.startswith("//"):
            file = Path(path[1:])
        elif path.startswith("/") and len(path) > 1:
            file = Path(path[1:])
            if not file.is_absolute():
                file = Path.cwd() / file
        else:
            raise SettingsError(variable, f"no file path in {value!r}", expected)
        return Database("mailgate.dbsqlite", str(file))
    if parts.scheme in ("postgres", "postgresql"):
        name = parts.path.lstrip("/")
        if not name or "/" in name:
            raise SettingsError(variable, f"no database name in {value!r}", expected)
        try:
            port = str(parts.port or 5432)
        except ValueError as exc:
            raise SettingsError(variable, "bad port", expected) from exc
        options: dict[str, str] = {}
        for pair in filter(None, parts.query.split("&")):
            key, _, val = pair.partition("=")
            if key not in ("sslmode", "sslrootcert", "connect_timeout", "application_name"):
                raise SettingsError(variable, f"unknown option {key!r}", expected)
            options[key] = unquote(val)
        return Database(
            "django.db.backends.postgresql",
            unquote(name),
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            host=parts.hostname or "",
            port=port,
            options=options,
        )
    raise SettingsError(variable, f"unsupported scheme {parts.scheme!r}", expected)


def _write_private(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)


def _read_or_create(path: Path, make: Any) -> str:
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(0o600)
        return path.read_text().strip()
    value: str = make()
    try:
        _write_private(path, value + "\n")
    except FileExistsError:
        return path.read_text().strip()
    return value


def parse_fernet_keys(variable: str, value: str) -> list[bytes]:
    keys: list[bytes] = []
    expected = "comma-separated Fernet keys (32 url-safe base64 bytes each), newest first"
    for i, raw in enumerate(k.strip() for k in value.split(",")):
        if not raw:
            continue
        try:
            if len(base64.urlsafe_b64decode(raw.encode())) != 32:
                raise ValueError
            Fernet(raw.encode())
        except Exception as exc:
            raise SettingsError(
                variable, f"key #{i + 1} is not a valid Fernet key", expected
            ) from exc
        keys.append(raw.encode())
    if not keys:
        raise SettingsError(variable, "no key given", expected)
    return keys


@dataclass(frozen=True)
class Config:
    home: Path
    database: Database
    public_url: str
    secret_key: str
    encryption_keys: list[bytes]
    admin_email: str
    admin_password: str
    microsoft_login_url: str
    google_auth_url: str
    google_token_url: str
    google_revoke_url: str
    debug: bool
    trusted_proxies: tuple[str, ...] = ()
    metrics_token: str = ""
    session_hours: int = 12
    max_recipients: int = 500
    api_rate_limit: int = 600
    # False when MAILGATE_PUBLIC_URL is unset: `run` / `web` then derive it from --host / --port.
    public_url_explicit: bool = True
    relay: RelayConfig | None = None


@dataclass(frozen=True)
class RelayConfig:
    """The SMTP relay's listeners and certificate; a listener is None when not set (off)."""

    listen: tuple[str, int] | None = None
    listen_tls: tuple[str, int] | None = None  # implicit TLS (port 465 style)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # AUTH without TLS from a client on this machine (MAILGATE_SMTP_PLAIN_ON_LOOPBACK).
    plain_on_loopback: bool = True


def parse_listen(variable: str, value: str) -> tuple[str, int] | None:
    """host:port ([v6]:port for IPv6); empty gives None (the listener is off)."""
    value = value.strip()
    if not value:
        return None
    expected = "host:port, such as 0.0.0.0:587 or [::1]:587"
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.strip():
        raise SettingsError(variable, f"{value!r} is not host:port", expected)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise SettingsError(
                variable, f"{host!r} is not an address or host name", expected
            ) from None
    return host, parse_int(variable, port, 0, 0, 65535)


def parse_relay(env: dict[str, str], home: Path) -> RelayConfig:
    """MAILGATE_SMTP_LISTEN, MAILGATE_SMTPS_LISTEN, MAILGATE_SMTP_TLS_CERT / _KEY (both or neither),
    MAILGATE_SMTP_PLAIN_ON_LOOPBACK (on unless set to a false value)."""
    cert_value = env.get("MAILGATE_SMTP_TLS_CERT", "").strip()
    key_value = env.get("MAILGATE_SMTP_TLS_KEY", "").strip()
    if bool(cert_value) != bool(key_value):
        missing = "MAILGATE_SMTP_TLS_KEY" if cert_value else "MAILGATE_SMTP_TLS_CERT"
        raise SettingsError(
            missing, "is not set while its pair is", "both the certificate and its key, or neither"
        )
    paths: list[Path | None] = []
    for variable, value in (
        ("MAILGATE_SMTP_TLS_CERT", cert_value),
        ("MAILGATE_SMTP_TLS_KEY", key_value),
    ):
        if not value:
            paths.append(None)
            continue
        path = Path(value).expanduser()
        path = path if path.is_absolute() else home / path
        if not path.is_file():
            raise SettingsError(variable, f"{path} is not a readable file", "a PEM file")
        paths.append(path)
    return RelayConfig(
        listen=parse_listen("MAILGATE_SMTP_LISTEN", env.get("MAILGATE_SMTP_LISTEN", "")),
        listen_tls=parse_listen("MAILGATE_SMTPS_LISTEN", env.get("MAILGATE_SMTPS_LISTEN", "")),
        tls_cert=paths[0],
        tls_key=paths[1],
        plain_on_loopback=_bool(
            "MAILGATE_SMTP_PLAIN_ON_LOOPBACK",
            env.get("MAILGATE_SMTP_PLAIN_ON_LOOPBACK", "").strip() or "1",
        ),
    )


def _bool(variable: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(
        variable, f"{value!r} is not a boolean", "1/0, true/false, yes/no or on/off"
    )


def tuning_number(variable: str, default: float, minimum: float, meaning: str) -> float:
    """A tuning number read when used: Django's setting `variable` when set (tests override it
    there), else the environment variable, else `default`; at least `minimum`. The one reader of
    the outbox's knobs (mailgate.outbox.conf) and the worker's dead threshold (core.heartbeat)."""
    from django.conf import settings  # read at use time: settings.py itself imports this module

    raw = getattr(settings, variable, None)
    if raw is None:
        raw = os.environ.get(variable, "").strip() or default
    expected = f"a number of {meaning}"
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SettingsError(variable, f"{raw!r} is not a number", expected) from None
    if not math.isfinite(value):  # float() takes "nan" and "inf", which no knob can use
        raise SettingsError(variable, f"{raw!r} is not a finite number", expected)
    if value < minimum:
        raise SettingsError(variable, f"{value} is below {minimum}", expected)
    return value


def parse_int(variable: str, value: str, default: int, low: int, high: int) -> int:
    """A whole number within [low, high]; empty gives the default."""
    value = value.strip()
    if not value:
        return default
    expected = f"a whole number from {low} to {high}"
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(variable, f"{value!r} is not a whole number", expected) from None
    if not low <= number <= high:
        raise SettingsError(variable, f"{number} is out of range", expected)
    return number


def _env_int(env: Mapping[str, str], variable: str, default: int, low: int, high: int) -> int:
    """parse_int() of the environment variable `variable` (unset or empty: the default)."""
    return parse_int(variable, env.get(variable, ""), default, low, high)


# How many steps of CPU priority (nice) the worker gives up: it drains the queue in the background,
# while the web process and the relay answer applications that wait for each reply (niced by 10 on
# two shared cores, an smtplib client sending through the relay waited a third as long). Off by
# default: starved by a loaded machine, niced workers let claims lapse (a test of four workers
# then sent messages twice), so an operator turns it on knowing the machine's load.
DEFAULT_WORKER_NICE = 0


def parse_trusted_proxies(value: str) -> tuple[str, ...]:
    """MAILGATE_TRUSTED_PROXIES: comma-separated addresses or CIDR networks of reverse proxies."""
    variable = "MAILGATE_TRUSTED_PROXIES"
    expected = "comma-separated IP addresses or networks, such as 127.0.0.1,10.0.0.0/8"
    found: list[str] = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        if item == "*":
            raise SettingsError(
                variable, "'*' would trust every client's forwarded headers", expected
            )
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError(
                variable, f"{item!r} is not an address or network", expected
            ) from None
        found.append(str(network))
    return tuple(found)


def load(env: dict[str, str] | None = None) -> Config:
    """Read and validate every MAILGATE_* setting; raise SettingsError on the first bad one."""
    env = dict(os.environ if env is None else env)
    home = Path(env.get("MAILGATE_HOME") or "./var").expanduser()
    if not home.is_absolute():
        home = Path.cwd() / home
    if home.exists() and not home.is_dir():
        raise SettingsError("MAILGATE_HOME", f"{home} is not a directory", "a writable directory")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            "MAILGATE_HOME", f"cannot create {home}: {exc.strerror}", "a writable directory"
        ) from exc

    db_url = env.get("MAILGATE_DATABASE_URL", "").strip()
    if db_url:
        database = parse_database_url(db_url, home)
    else:
        database = Database("mailgate.dbsqlite", str(home / "mailgate.sqlite3"))

    public_url_explicit = bool(env.get("MAILGATE_PUBLIC_URL", "").strip())
    public_url = parse_public_url(env.get("MAILGATE_PUBLIC_URL") or "http://127.0.0.1:8000")

    secret_key = env.get("MAILGATE_SECRET_KEY", "").strip()
    if "MAILGATE_SECRET_KEY" in env and len(secret_key) < 32:
        raise SettingsError(
            "MAILGATE_SECRET_KEY", "too short", "a random string of at least 32 characters"
        )
    if not secret_key:
        secret_key = _read_or_create(home / "secret_key", lambda: secrets.token_urlsafe(50))

    if env.get("MAILGATE_ENCRYPTION_KEYS", "").strip():
        keys = parse_fernet_keys("MAILGATE_ENCRYPTION_KEYS", env["MAILGATE_ENCRYPTION_KEYS"])
    else:
        stored = _read_or_create(home / "encryption_keys", lambda: Fernet.generate_key().decode())
        keys = parse_fernet_keys(f"{home / 'encryption_keys'} (generated key file)", stored)

    admin_email = env.get("MAILGATE_ADMIN_EMAIL", "").strip()
    if admin_email and (
        "@" not in admin_email or admin_email.startswith("@") or admin_email.endswith("@")
    ):
        raise SettingsError(
            "MAILGATE_ADMIN_EMAIL", f"{admin_email!r} is not an e-mail address", "name@example.com"
        )
    admin_password = env.get("MAILGATE_ADMIN_PASSWORD", "")
    if admin_password and len(admin_password) < 10:
        raise SettingsError("MAILGATE_ADMIN_PASSWORD", "too short", "at least 10 characters")

    microsoft = parse_http_url(
        "MAILGATE_MICROSOFT_LOGIN_URL",
        env.get("MAILGATE_MICROSOFT_LOGIN_URL")
        or IDENTITY_DEFAULTS["MAILGATE_MICROSOFT_LOGIN_URL"],
    )
    google_auth = parse_http_url(
        "MAILGATE_GOOGLE_AUTH_URL",
        env.get("MAILGATE_GOOGLE_AUTH_URL") or IDENTITY_DEFAULTS["MAILGATE_GOOGLE_AUTH_URL"],
    )
    google_token = parse_http_url(
        "MAILGATE_GOOGLE_TOKEN_URL",
        env.get("MAILGATE_GOOGLE_TOKEN_URL") or IDENTITY_DEFAULTS["MAILGATE_GOOGLE_TOKEN_URL"],
    )
    default_revoke = google_token.rsplit("/", 1)[0] + "/revoke"
    google_revoke = parse_http_url(
        "MAILGATE_GOOGLE_REVOKE_URL", env.get("MAILGATE_GOOGLE_REVOKE_URL") or default_revoke
    )
    cert_file = env.get("SSL_CERT_FILE", "").strip()
    if cert_file and not Path(cert_file).is_file():
        raise SettingsError(
            "SSL_CERT_FILE",
            f"{cert_file} does not exist",
            "the path of a PEM file of CA certificates",
        )

    metrics_token = env.get("MAILGATE_METRICS_TOKEN", "").strip()
    if metrics_token and (len(metrics_token) < 16 or not metrics_token.isprintable()):
        raise SettingsError(
            "MAILGATE_METRICS_TOKEN",
            "too short or not printable",
            "a random string of at least 16 printable characters",
        )

    return Config(
        home=home,
        database=database,
        public_url=public_url,
        public_url_explicit=public_url_explicit,
        secret_key=secret_key,
        encryption_keys=keys,
        admin_email=admin_email,
        admin_password=admin_password,
        microsoft_login_url=microsoft,
        google_auth_url=google_auth,
        google_token_url=google_token,
        google_revoke_url=google_revoke,
        debug=_bool("MAILGATE_DEBUG", env.get("MAILGATE_DEBUG", "")),
        trusted_proxies=parse_trusted_proxies(env.get("MAILGATE_TRUSTED_PROXIES", "")),
        metrics_token=metrics_token,
        session_hours=_env_int(env, "MAILGATE_SESSION_HOURS", 12, 1, 24 * 30),
        max_recipients=_env_int(env, "MAILGATE_MAX_RECIPIENTS", 500, 1, 100_000),
        api_rate_limit=_env_int(env, "MAILGATE_API_RATE_LIMIT", 600, 0, 1_000_000),
        relay=parse_relay(env, home),
    )


LOG_FORMATS = ("plain", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Operations:
    """How the processes run: logging, the web server's capacity, the worker's CPU priority."""

    log_format: str = "plain"
    log_level: str = "INFO"
    web_threads: int = 8
    web_connection_limit: int = 100
    worker_nice: int = DEFAULT_WORKER_NICE  # 0 (the same as the rest) to 19 (the lowest)


def load_operations(env: dict[str, str] | None = None) -> Operations:
    """MAILGATE_LOG_FORMAT, MAILGATE_LOG_LEVEL, MAILGATE_WEB_THREADS, MAILGATE_WEB_CONNECTION_LIMIT,
    MAILGATE_WORKER_NICE: read when the settings load, so a bad value stops any command at once."""
    env = dict(os.environ if env is None else env)
    log_format = env.get("MAILGATE_LOG_FORMAT", "").strip().lower() or "plain"
    if log_format not in LOG_FORMATS:
        raise SettingsError("MAILGATE_LOG_FORMAT", f"{log_format!r} is not known", "plain or json")
    log_level = env.get("MAILGATE_LOG_LEVEL", "").strip().upper() or "INFO"
    if log_level not in LOG_LEVELS:
        raise SettingsError(
            "MAILGATE_LOG_LEVEL", f"{log_level!r} is not a level", " / ".join(LOG_LEVELS)
        )
    return Operations(
        log_format=log_format,
        log_level=log_level,
        web_threads=_env_int(env, "MAILGATE_WEB_THREADS", 8, 1, 256),
        web_connection_limit=_env_int(env, "MAILGATE_WEB_CONNECTION_LIMIT", 100, 1, 10_000),
        worker_nice=_env_int(env, "MAILGATE_WORKER_NICE", DEFAULT_WORKER_NICE, 0, 19),
    )
