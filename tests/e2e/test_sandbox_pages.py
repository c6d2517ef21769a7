"""The sandbox's sign-in and consent pages driven in Debian chromium, as an administrator meets them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from mailgate.sandbox.server import Sandbox
from tests.e2e.conftest import TIMEOUT_MS
from tests.sandbox_fixtures import sandbox, sandbox_factory, sandbox_template

__all__ = ["sandbox", "sandbox_factory", "sandbox_template"]

pytestmark = [pytest.mark.browser, pytest.mark.nodb]


class _Callback(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"callback received")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def callback() -> Iterator[str]:
    """A real loopback web app that receives the redirect."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Callback)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/oauth/microsoft/callback"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def _authorize(sandbox: Sandbox, redirect_uri: str) -> str:
    demo = sandbox.demo
    params = {
        "client_id": demo["client_id"],
        "response_type": "code",
        "redirect_uri": redirect_uri,
        "scope": "offline_access openid email https://outlook.office.com/SMTP.Send https://outlook.office.com/IMAP.AccessAsUser.All",
        "state": "browser-state",
        "login_hint": demo["user"],
        "code_challenge": "c" * 43,
        "code_challenge_method": "plain",
    }
    return f"{sandbox.http_url}/{demo['tenant_domain']}/oauth2/v2.0/authorize?{urlencode(params)}"


def _sign_in(page: Page, sandbox: Sandbox, callback: str) -> None:
    sandbox.control.add_redirect_uri(sandbox.demo["client_id"], callback)
    page.goto(_authorize(sandbox, callback))
    expect(page.get_by_label("Email")).to_have_value(sandbox.demo["user"])
    page.get_by_label("Password").fill(sandbox.demo["password"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Permissions requested")).to_be_visible()


def test_sign_in_and_accept_returns_a_code_to_the_app(
    page: Page, sandbox: Sandbox, callback: str, screenshots: Path
) -> None:
    _sign_in(page, sandbox, callback)
    expect(page.get_by_text("Send email as you (SMTP.Send)")).to_be_visible()
    expect(
        page.get_by_text("Read and write access to your mail (IMAP.AccessAsUser.All)")
    ).to_be_visible()
    expect(
        page.get_by_text("Maintain access to data you have given it access to (offline_access)")
    ).to_be_visible()
    page.screenshot(path=str(screenshots / "consent.png"))
    page.get_by_role("button", name="Accept").click()
    page.wait_for_url(callback + "?*")
    expect(page.get_by_text("callback received")).to_be_visible()
    params = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
    assert params["state"] == "browser-state"
    token = httpx.post(
        f"{sandbox.http_url}/{sandbox.demo['tenant_domain']}/oauth2/v2.0/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": callback,
            "client_id": sandbox.demo["client_id"],
            "client_secret": sandbox.demo["client_secret"],
            "code_verifier": "c" * 43,
        },
    )
    assert token.status_code == 200, token.text
    # The browser session is remembered: a second authorization needs neither page.
    page.goto(_authorize(sandbox, callback))
    page.wait_for_url(callback + "?*")


def test_cancel_returns_access_denied_to_the_app(
    page: Page, sandbox: Sandbox, callback: str
) -> None:
    _sign_in(page, sandbox, callback)
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_url(callback + "?*")
    params = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
    assert params["error"] == "access_denied"
    assert params["error_description"].startswith("AADSTS65004:")
    assert params["state"] == "browser-state"


def test_a_wrong_password_stays_on_the_sign_in_page(
    page: Page, sandbox: Sandbox, callback: str
) -> None:
    sandbox.control.add_redirect_uri(sandbox.demo["client_id"], callback)
    page.goto(_authorize(sandbox, callback))
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Your account or password is incorrect.")


def test_the_google_pages_sign_in_and_continue(page: Page, sandbox: Sandbox, callback: str) -> None:
    google_callback = callback.replace("microsoft", "google")
    sandbox.control.call(
        "update_google_project",
        client_id=sandbox.demo["google_client_id"],
        redirect_uri=google_callback,
    )
    params = {
        "client_id": sandbox.demo["google_client_id"],
        "redirect_uri": google_callback,
        "response_type": "code",
        "scope": "https://mail.google.com/",
        "access_type": "offline",
        "prompt": "consent",
        "state": "g",
    }
    page.goto(f"{sandbox.http_url}/o/oauth2/v2/auth?{urlencode(params)}")
    page.get_by_label("Email").fill(sandbox.demo["google_user"])
    page.get_by_label("Password").fill(sandbox.demo["google_password"])
    page.get_by_role("button", name="Next").click()
    expect(
        page.get_by_text("Read, compose, send, and permanently delete all your email from Gmail")
    ).to_be_visible()
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(google_callback + "?*")
    assert "code=" in page.url
