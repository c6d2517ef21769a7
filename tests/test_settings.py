from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mailgate import conf

pytestmark = pytest.mark.nodb


def load(tmp_path: Path, **env: str) -> conf.Config:
    return conf.load({"MAILGATE_HOME": str(tmp_path), **env})


def test_it_defaults_to_sqlite_in_the_home_folder(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.database.engine == "mailgate.dbsqlite"
    assert config.database.name == str(tmp_path / "mailgate.sqlite3")
    assert config.public_url == "http://127.0.0.1:8000"
    assert config.microsoft_login_url == "https://login.microsoftonline.com"


def test_it_generates_secrets_with_mode_0600_and_reuses_them(tmp_path: Path) -> None:
    first = load(tmp_path)
    for name in ("secret_key", "encryption_keys"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    second = load(tmp_path)
    assert first.secret_key == second.secret_key
    assert first.encryption_keys == second.encryption_keys


def test_it_parses_a_postgresql_url(tmp_path: Path) -> None:
    db = load(
        tmp_path, MAILGATE_DATABASE_URL="postgresql://u:p%40ss@db.example:6543/mail?sslmode=require"
    ).database
    assert (db.engine, db.name, db.user, db.password, db.host, db.port) == (
        "django.db.backends.postgresql",
        "mail",
        "u",
        "p@ss",
        "db.example",
        "6543",
    )
    assert db.options == {"sslmode": "require"}


def test_it_parses_an_absolute_sqlite_url(tmp_path: Path) -> None:
    db = load(tmp_path, MAILGATE_DATABASE_URL=f"sqlite:///{tmp_path}/x.db").database
    assert db.name == f"{tmp_path}/x.db"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("MAILGATE_DATABASE_URL", "mysql://x/y", "unsupported scheme"),
        ("MAILGATE_DATABASE_URL", "postgresql://host:5432/", "no database name"),
        ("MAILGATE_DATABASE_URL", "postgresql://host/db?foo=1", "unknown option"),
        ("MAILGATE_PUBLIC_URL", "ftp://x", "not an absolute http(s) URL"),
        ("MAILGATE_PUBLIC_URL", "https://x/?a=1", "query string"),
        ("MAILGATE_MICROSOFT_LOGIN_URL", "http://login.example.com", "only accepted for loopback"),
        ("MAILGATE_GOOGLE_TOKEN_URL", "not a url", "not an absolute URL"),
        ("MAILGATE_ENCRYPTION_KEYS", "abc", "not a valid Fernet key"),
        ("MAILGATE_SECRET_KEY", "short", "too short"),
        ("MAILGATE_ADMIN_EMAIL", "nobody", "not an e-mail address"),
        ("MAILGATE_ADMIN_PASSWORD", "123", "too short"),
        ("MAILGATE_DEBUG", "maybe", "not a boolean"),
        ("SSL_CERT_FILE", "/nonexistent/ca.pem", "does not exist"),
    ],
)
def test_it_refuses_a_bad_value_naming_the_variable(
    tmp_path: Path, variable: str, value: str, fragment: str
) -> None:
    with pytest.raises(conf.SettingsError) as err:
        load(tmp_path, **{variable: value})
    assert str(err.value).startswith(variable + ":")
    assert fragment in str(err.value)
    assert "Expected" in str(err.value)


def test_it_accepts_plain_http_identity_urls_on_loopback(tmp_path: Path) -> None:
    config = load(tmp_path, MAILGATE_MICROSOFT_LOGIN_URL="http://127.0.0.1:9000/")
    assert config.microsoft_login_url == "http://127.0.0.1:9000"


def test_a_home_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_text("")
    with pytest.raises(conf.SettingsError, match="MAILGATE_HOME"):
        conf.load({"MAILGATE_HOME": str(file)})


def test_the_cli_stops_with_the_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "mailgate.cli", "check"],
        env={
            "MAILGATE_HOME": str(tmp_path),
            "MAILGATE_PUBLIC_URL": "gopher://x",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MAILGATE_PUBLIC_URL" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAILGATE_TRUSTED_PROXIES", "*"),
        ("MAILGATE_TRUSTED_PROXIES", "proxy.internal"),
        ("MAILGATE_METRICS_TOKEN", "short"),
        ("MAILGATE_SESSION_HOURS", "0"),
        ("MAILGATE_MAX_RECIPIENTS", "many"),
        ("MAILGATE_API_RATE_LIMIT", "-1"),
    ],
)
def test_the_security_settings_are_parsed_strictly(
    tmp_path: Path, variable: str, value: str
) -> None:
    with pytest.raises(conf.SettingsError, match=variable):
        load(tmp_path, **{variable: value})


def test_the_security_settings_have_defaults(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert (config.trusted_proxies, config.metrics_token) == ((), "")
    assert (config.session_hours, config.max_recipients, config.api_rate_limit) == (12, 500, 600)
    config = load(tmp_path, MAILGATE_TRUSTED_PROXIES="10.0.0.0/8, ::1", MAILGATE_API_RATE_LIMIT="0")
    assert config.trusted_proxies == ("10.0.0.0/8", "::1/128") and config.api_rate_limit == 0


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("MAILGATE_SMTP_LISTEN", "587", "is not host:port"),
        ("MAILGATE_SMTP_LISTEN", "mail host:587", "is not an address or host name"),
        ("MAILGATE_SMTPS_LISTEN", "0.0.0.0:99999", "out of range"),
        ("MAILGATE_SMTP_TLS_CERT", "/nonexistent/cert.pem", "is not set while its pair is"),
        ("MAILGATE_SMTP_PLAIN_ON_LOOPBACK", "maybe", "is not a boolean"),
    ],
)
def test_the_relay_settings_are_parsed_strictly(
    tmp_path: Path, variable: str, value: str, problem: str
) -> None:
    with pytest.raises(conf.SettingsError, match=problem) as refused:
        load(tmp_path, **{variable: value})
    assert str(refused.value).startswith("MAILGATE_SMTP")


def test_the_relay_is_off_by_default_and_reads_its_listeners_and_certificate(
    tmp_path: Path,
) -> None:
    assert load(tmp_path).relay == conf.RelayConfig()
    (tmp_path / "c.pem").write_text("cert")
    (tmp_path / "k.pem").write_text("key")
    relay = load(
        tmp_path,
        MAILGATE_SMTP_LISTEN="0.0.0.0:587",
        MAILGATE_SMTPS_LISTEN="[::1]:465",
        MAILGATE_SMTP_TLS_CERT="c.pem",
        MAILGATE_SMTP_TLS_KEY=str(tmp_path / "k.pem"),
    ).relay
    assert relay == conf.RelayConfig(
        ("0.0.0.0", 587), ("::1", 465), tmp_path / "c.pem", tmp_path / "k.pem"
    )
    with pytest.raises(conf.SettingsError, match=r"MAILGATE_SMTP_TLS_KEY: .* is not a readable"):
        load(tmp_path, MAILGATE_SMTP_TLS_CERT="c.pem", MAILGATE_SMTP_TLS_KEY="missing.pem")


@pytest.mark.parametrize(
    ("value", "allowed"), [("", True), ("yes", True), ("0", False), ("off", False)]
)
def test_plain_logins_from_this_machine_are_on_unless_turned_off(
    tmp_path: Path, value: str, allowed: bool
) -> None:
    assert load(tmp_path).relay.plain_on_loopback is True
    relay = load(tmp_path, MAILGATE_SMTP_PLAIN_ON_LOOPBACK=value).relay
    assert relay.plain_on_loopback is allowed
