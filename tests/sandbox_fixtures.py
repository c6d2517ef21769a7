"""Reusable pytest fixtures for the offline sandbox (load with `pytest_plugins = ["tests.sandbox_fixtures"]`).

- `sandbox`: a started `Sandbox` (identity HTTP + HTTPS, Exchange-like SMTP; no Dovecot) on free
  loopback ports with a fresh demo state, stopped after the test. `sandbox.demo` holds the demo
  tenant, app (client ID + secret), users and passwords; `sandbox.control` is the control client.
- `sandbox_factory(**kwargs)`: the same with `Sandbox` options (e.g. `dovecot=True`, `config=...`).
- `complete_sign_in(...)`: drives the sandbox's sign-in and consent pages over HTTP, as a browser would.
- `demo_tokens(...)`: the demo user's tokens through those pages and the token endpoint (code + PKCE).

The signing key and the CA are made once per session and copied into each sandbox's state dir, so a
sandbox starts in milliseconds and `SSL_CERT_FILE` can point at one CA file for the whole session.
"""

from __future__ import annotations

import html
import re
import shutil
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from mailgate.sandbox.ca import SandboxCA
from mailgate.sandbox.server import Sandbox
from mailgate.sandbox.tokens import SigningKey


@pytest.fixture(scope="session")
def sandbox_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir holding only the signing key and the CA, copied into every sandbox."""
    template = tmp_path_factory.mktemp("sandbox-template")
    SigningKey(template)
    SandboxCA(template)
    return template


@pytest.fixture
def sandbox_factory(
    tmp_path_factory: pytest.TempPathFactory, sandbox_template: Path
) -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def make(state_dir: Path | None = None, **kwargs: Any) -> Sandbox:
        if state_dir is None:
            state_dir = tmp_path_factory.mktemp("sandbox")
            shutil.copytree(sandbox_template, state_dir, dirs_exist_ok=True)
        sandbox = Sandbox(state_dir, **kwargs)
        started.append(sandbox)
        return sandbox.start()

    yield make
    for sandbox in reversed(started):
        sandbox.stop()


@pytest.fixture
def sandbox(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    return sandbox_factory()


def ca_context(ca_file: Path | str) -> ssl.SSLContext:
    """A client TLS context trusting `ca_file` (e.g. the sandbox CA): httpx's `verify=` takes a
    context, a path there is deprecated."""
    return ssl.create_default_context(cafile=str(ca_file))


_CTX = re.compile(r"name='ctx' value='([^']*)'")
_ACTION = re.compile(r"<form method='post' action='([^']*)'")


def page_form(page: str) -> tuple[str, str]:
    """The form action and hidden `ctx` of a sandbox sign-in or consent page."""
    action, ctx = _ACTION.search(page), _CTX.search(page)
    if not action or not ctx:
        raise AssertionError(f"not a sandbox sign-in/consent page: {page[:300]!r}")
    return html.unescape(action.group(1)), html.unescape(ctx.group(1))


def complete_sign_in(
    client: httpx.Client,
    authorize_url: str,
    username: str,
    password: str,
    *,
    accept: bool = True,
) -> httpx.Response:
    """GET the authorize URL, fill in the sign-in page (if shown) and answer the consent page (if
    shown); return the final response: a 302 to the redirect URI, a form_post page or an error page.
    """
    response = client.get(authorize_url)
    for _ in range(3):
        if response.status_code != 200 or "name='ctx'" not in response.text:
            return response
        action, ctx = page_form(response.text)
        target = urljoin(str(response.url), action)
        if "name='password'" in response.text:
            response = client.post(
                target, data={"ctx": ctx, "username": username, "password": password}
            )
        else:
            decision = "accept" if accept else "cancel"
            response = client.post(target, data={"ctx": ctx, "decision": decision})
    return response


def redirect_params(response: httpx.Response) -> dict[str, str]:
    """The query (or fragment) parameters of a redirect response's Location."""
    assert response.status_code == 302, (response.status_code, response.text[:500])
    parts = urlsplit(response.headers["location"])
    raw = parts.query or parts.fragment
    return {k: v[0] for k, v in parse_qs(raw).items()}


DEMO_REDIRECT = "http://127.0.0.1:8000/oauth/microsoft/callback"
SMTP_SCOPE = "offline_access openid https://outlook.office.com/SMTP.Send"


def demo_tokens(
    login_url: str,
    ca_file: str | Path,
    demo: dict[str, Any],
    *,
    state: str,
    scope: str = SMTP_SCOPE,
    redirect_uri: str = DEMO_REDIRECT,
) -> Any:
    """Sign in as the demo user on the sandbox's pages and redeem the code, as the callback does;
    the TokenSet. The token request trusts the sandbox through SSL_CERT_FILE, as mailgate does."""
    from mailgate.providers.http import AuthorizationRequest, CodeRedemption
    from mailgate.providers.microsoft import client

    verifier = "v" * 64
    request = AuthorizationRequest(
        demo["client_id"], redirect_uri, scope, state, verifier, demo["user"]
    )
    url = client.authorize_url(login_url, "organizations", request)
    with httpx.Client(verify=ca_context(ca_file), timeout=10) as browser:
        response = complete_sign_in(browser, url, demo["user"], demo["password"])
    redemption = CodeRedemption(
        demo["client_id"],
        demo["client_secret"],
        redirect_params(response)["code"],
        verifier,
        redirect_uri,
    )
    return client.redeem_code(
        login_url,
        "organizations",
        redemption,
        scope=scope,
    )
