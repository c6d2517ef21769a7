"""A sandbox per test module, mailgate pointed at it, and a driver for its sign-in and consent pages."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from django.test import Client

from mailgate.sandbox.server import Sandbox
from mailgate.servers.models import MailServer
from tests.sandbox_fixtures import ca_context

FORM = re.compile(r"<form method='post' action='([^']+)'>(.*?)</form>", re.S)
HIDDEN = re.compile(r"<input type='hidden' name='([^']+)' value='([^']*)'>")


@pytest.fixture(scope="module")
def mg_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("sandbox"), dovecot=False) as sandbox:
        yield sandbox


@pytest.fixture
def idp(mg_sandbox: Sandbox, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """The module's sandbox, with mailgate's settings pointing at it and no faults left over."""
    for key, value in mg_sandbox.env().items():
        if key.startswith("MAILGATE_") and not key.startswith("MAILGATE_SANDBOX_"):
            setattr(settings, key, value)
    monkeypatch.setenv("SSL_CERT_FILE", str(mg_sandbox.ca_file))
    settings.MAILGATE_HTTP_TIMEOUT = 3
    monkeypatch.setattr("mailgate.oauth.tokens.RETRY_PAUSES", (0.05,))
    control = mg_sandbox.control
    control.clear_faults()
    control.reset_counters()
    yield mg_sandbox
    control.clear_faults()


def smtp_address(sandbox: Sandbox) -> tuple[str, int]:
    host, _, port = sandbox.address("smtp").rpartition(":")
    return host, int(port)


@pytest.fixture
def outlook_server(idp: Sandbox, db: None) -> MailServer:
    demo = idp.demo
    host, port = smtp_address(idp)
    return MailServer.objects.create(
        name="Contoso sales",
        auth_method="outlook",
        username=demo["user"],
        client_id=demo["client_id"],
        client_secret=demo["client_secret"],
        smtp_host=host,
        smtp_port=port,
        smtp_security="starttls",
    )


@pytest.fixture
def gmail_server(idp: Sandbox, db: None) -> MailServer:
    demo = idp.demo
    host, port = smtp_address(idp)
    return MailServer.objects.create(
        name="Gmail support",
        auth_method="gmail",
        username=demo["google_user"],
        client_id=demo["google_client_id"],
        client_secret=demo["google_client_secret"],
        smtp_host=host,
        smtp_port=port,
        smtp_security="starttls",
    )


class ProviderPage(Exception):
    """The provider showed a page of its own (an error) instead of redirecting back."""

    def __init__(self, text: str) -> None:
        super().__init__(text[:300])
        self.text = text


def _form(page: str) -> tuple[str, dict[str, str]]:
    match = FORM.search(page)
    if not match:
        raise ProviderPage(page)
    fields = {html.unescape(k): html.unescape(v) for k, v in HIDDEN.findall(match.group(2))}
    return html.unescape(match.group(1)), fields


class Browser:
    """Follows the sandbox's sign-in and consent pages like a user would, over real HTTP."""

    def __init__(self, ca_file: Path) -> None:
        self.http = httpx.Client(
            verify=ca_context(ca_file),
            timeout=10,
            follow_redirects=False,
        )

    def close(self) -> None:
        self.http.close()

    def get(self, url: str) -> httpx.Response:
        return self.http.get(url)

    def sign_in(
        self, authorize_url: str, username: str, password: str, decision: str = "accept"
    ) -> str:
        """Return the URL the provider finally redirects to (mailgate's callback with code or error)."""
        response = self.http.get(authorize_url)
        for _ in range(6):
            if response.status_code in (301, 302, 303):
                location = urljoin(str(response.url), response.headers["location"])
                if not location.startswith(
                    f"{urlsplit(authorize_url).scheme}://{urlsplit(authorize_url).netloc}"
                ):
                    return location
                response = self.http.get(location)
                continue
            if response.status_code != 200:
                raise ProviderPage(response.text)
            action, fields = _form(response.text)
            target = urljoin(str(response.url), action)
            if "name='password'" in response.text:
                fields.update(username=username, password=password)
            else:
                fields["decision"] = decision
            response = self.http.post(target, data=fields)
        raise AssertionError("the sign-in did not finish within 6 pages")


@pytest.fixture
def browser(idp: Sandbox) -> Iterator[Browser]:
    b = Browser(idp.ca_file)
    yield b
    b.close()


def start_connect(client: Client, server: MailServer) -> str:
    response = client.post(f"/oauth/servers/{server.pk}/connect")
    assert response.status_code == 302, response.content[:500]
    return str(response["Location"])


def callback_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def connect(client: Client, browser: Browser, server: MailServer, password: str) -> Any:
    """The whole connect flow; returns mailgate's response to the callback."""
    location = browser.sign_in(start_connect(client, server), server.username, password)
    return client.get(callback_path(location))


REDIRECT = "http://127.0.0.1:8000/oauth/microsoft/callback"


@pytest.fixture
def own_app(idp: Sandbox) -> dict[str, str]:
    """A fresh app registration in the demo tenant, for tests that change or break it."""
    app = idp.control.call(
        "create_app",
        name=f"test app {uuid.uuid4().hex[:6]}",
        tenant=idp.demo["tenant_id"],
        audience="AzureADMultipleOrgs",
        redirect_uris=[REDIRECT],
    )
    return {
        "client_id": app["client_id"],
        "secret": app["secret"]["value"],
        "secret_id": app["secret"]["id"],
    }


@pytest.fixture
def own_server(outlook_server: MailServer, own_app: dict[str, str]) -> MailServer:
    outlook_server.client_id = own_app["client_id"]
    outlook_server.client_secret = own_app["secret"]  # type: ignore[assignment]
    outlook_server.save()
    return outlook_server


@pytest.fixture
def fresh_user(idp: Sandbox) -> dict[str, str]:
    """A new user of the demo tenant: revoking its grants cannot disturb other tests."""
    email = f"user-{uuid.uuid4().hex[:8]}@contoso.example"
    password = f"Pw-{uuid.uuid4().hex}"
    idp.control.call("create_user", email=email, password=password, display_name="Test User")
    return {"email": email, "password": password}


@pytest.fixture
def revocable_server(outlook_server: MailServer, fresh_user: dict[str, str]) -> MailServer:
    outlook_server.username = fresh_user["email"]
    outlook_server.save()
    return outlook_server
