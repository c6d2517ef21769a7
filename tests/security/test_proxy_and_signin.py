"""Attack 4: locking an administrator out by failing their sign-in from elsewhere; one client behind
a reverse proxy locking out everyone; a client claiming another address or https through forwarded
headers; a request for a Host mailgate does not serve."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from mailgate import conf
from mailgate.accounts import throttle
from mailgate.accounts.users import create_user
from mailgate.console import serve
from mailgate.wsgi import TrustedProxies

PASSWORD = "correct horse battery"


@pytest.fixture
def admin(db: None) -> User:
    create_user("alice@example.com", PASSWORD)
    return User.objects.get(username="alice@example.com")


def sign_in(username: str, password: str, address: str) -> Any:
    return Client(REMOTE_ADDR=address).post(
        "/accounts/login/", {"username": username, "password": password}
    )


def test_a_stranger_who_knows_the_admins_address_cannot_lock_them_out(admin: User) -> None:
    for _ in range(30):
        sign_in("alice@example.com", "guess", address="198.51.100.66")
    assert sign_in("alice@example.com", PASSWORD, address="192.0.2.10").status_code == 302
    locked = sign_in("alice@example.com", PASSWORD, address="198.51.100.66")
    assert "Too many failed sign-ins" in locked.content.decode()


def test_one_client_failing_on_many_accounts_locks_out_no_one_else(admin: User) -> None:
    for i in range(30):
        sign_in(f"user{i}@example.com", "guess", address="198.51.100.66")
    assert sign_in("alice@example.com", PASSWORD, address="198.51.100.67").status_code == 302
    assert sign_in("alice@example.com", PASSWORD, address="198.51.100.66").status_code == 302


def test_the_lock_out_grows_with_each_further_failure(admin: User, time_machine: Any) -> None:
    start = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
    time_machine.move_to(start, tick=False)
    for _ in range(5):
        throttle.record_failure("alice@example.com", "198.51.100.66")
    first = throttle.locked_until("alice@example.com", "198.51.100.66")
    throttle.record_failure("alice@example.com", "198.51.100.66")
    second = throttle.locked_until("alice@example.com", "198.51.100.66")
    throttle.record_failure("alice@example.com", "198.51.100.66")
    third = throttle.locked_until("alice@example.com", "198.51.100.66")
    assert first is not None and second is not None and third is not None
    assert (first - start, second - start, third - start) == (
        dt.timedelta(minutes=1),
        dt.timedelta(minutes=2),
        dt.timedelta(minutes=4),
    )


HIT_SCRIPT = """
import sys, django
django.setup()
from mailgate.accounts import throttle
for _ in range(int(sys.argv[1])):
    throttle.hit("race", 600)
"""


def test_counters_lose_no_increment_under_concurrent_processes(tmp_path: Any) -> None:
    env = {
        **os.environ,
        "MAILGATE_HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "mailgate.settings",
    }
    env.pop("MAILGATE_DATABASE_URL", None)
    migrate = "import django; django.setup(); from django.core.management import call_command; "
    migrate += "call_command('migrate', 'accounts', verbosity=0)"
    subprocess.run([sys.executable, "-c", migrate], env=env, check=True, timeout=120)
    processes = [
        subprocess.Popen([sys.executable, "-c", HIT_SCRIPT, "40"], env=env) for _ in range(4)
    ]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0, 0]
    count = "import django; django.setup(); from mailgate.accounts.models import Counter; "
    count += "print(Counter.objects.get(name='race').count)"
    result = subprocess.run(
        [sys.executable, "-c", count], env=env, check=True, timeout=60, capture_output=True
    )
    assert result.stdout.decode().strip() == "160"


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    forwarded = environ.get("HTTP_X_FORWARDED_FOR", "-")
    return [f"{environ['REMOTE_ADDR']} {environ['wsgi.url_scheme']} {forwarded}".encode()]


def run_until_closed(server: Any) -> None:
    with contextlib.suppress(OSError, ValueError):  # the socket closed by server.close()
        server.run()


@pytest.fixture
def served() -> Iterator[Callable[[list[str]], int]]:
    """Serves the echo app behind TrustedProxies with waitress on a loopback port."""
    servers: list[Any] = []

    def start(networks: list[str]) -> int:
        server = serve.make_server("127.0.0.1", 0, TrustedProxies(echo, networks))
        threading.Thread(target=run_until_closed, args=(server,), daemon=True).start()
        servers.append(server)
        return int(server.effective_port)

    yield start
    for server in servers:
        server.close()


def ask(port: int, **headers: str) -> str:
    connection_ = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection_.request("GET", "/", headers=headers)
    body = connection_.getresponse().read().decode()
    connection_.close()
    return body


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(served: Any) -> None:
    port = served(["10.0.0.0/8"])
    answer = ask(port, **{"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    assert answer == "127.0.0.1 http -"


def test_a_trusted_proxy_gives_the_real_client_address_and_scheme(served: Any) -> None:
    port = served(["127.0.0.1", "10.0.0.0/8"])
    answer = ask(
        port,
        **{"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 10.1.2.3", "X-Forwarded-Proto": "https"},
    )
    # The rightmost address that is not a trusted proxy: the left part is the client's own claim.
    assert answer.split()[:2] == ["203.0.113.9", "https"]


def test_trusted_proxies_are_parsed_strictly(tmp_path: Any) -> None:
    config = conf.load(
        {"MAILGATE_HOME": str(tmp_path), "MAILGATE_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"}
    )
    assert config.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8")
    for bad in ("*", "proxy.example", "10.0.0.0/99"):
        with pytest.raises(conf.SettingsError, match="MAILGATE_TRUSTED_PROXIES"):
            conf.load({"MAILGATE_HOME": str(tmp_path), "MAILGATE_TRUSTED_PROXIES": bad})


def test_a_request_for_another_host_is_refused(db: None, settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["mail.example.com", "127.0.0.1", "localhost", "[::1]"]
    assert Client().get("/healthz", HTTP_HOST="evil.example").status_code == 400
    assert Client().get("/healthz", HTTP_HOST="mail.example.com").status_code == 200


def test_allowed_hosts_follow_the_public_url(tmp_path: Any) -> None:
    script = "import django; django.setup(); from django.conf import settings as s; "
    script += "print(s.ALLOWED_HOSTS)"
    env = {
        "MAILGATE_HOME": str(tmp_path),
        "MAILGATE_PUBLIC_URL": "https://mail.example.com",
        "DJANGO_SETTINGS_MODULE": "mailgate.settings",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "['127.0.0.1', '[::1]', 'localhost', 'mail.example.com']"
