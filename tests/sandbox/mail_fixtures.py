"""A small real MailPolicy over a SigningKey, token minting, SASL helpers and a recording delivery, for the mail-side tests."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msal
import pytest

from mailgate.sandbox.interfaces import SubmissionLimits
from mailgate.sandbox.server import Sandbox
from mailgate.sandbox.tokens import InvalidToken, SigningKey
from tests.sandbox_fixtures import ca_context, complete_sign_in, redirect_params

OUTLOOK = "https://outlook.office.com"
GOOGLE = "https://mail.google.com/"


@dataclass
class SmallPolicy:
    """interfaces.MailPolicy for tests: users, toggles, grants and a clock that tests move by hand."""

    key: SigningKey
    users: set[str] = field(default_factory=set)
    disabled: dict[str, str] = field(default_factory=dict)
    send_as: set[tuple[str, str]] = field(default_factory=set)
    limits: dict[str, SubmissionLimits] = field(default_factory=dict)
    google_tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    offset: float = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def verify_access_token(self, token: str) -> dict[str, Any]:
        if token in self.google_tokens:
            address, exp = self.google_tokens[token]
            if exp <= self.now():
                raise InvalidToken("the token has expired")
            return {"aud": GOOGLE, "scp": GOOGLE, "email": address, "exp": exp}
        return self.key.verify_access_token(token, now=self.now())

    def mailbox_exists(self, address: str) -> bool:
        return address.lower() in self.users

    def smtp_auth_disabled(self, address: str) -> str | None:
        return self.disabled.get(address.lower())

    def may_send_as(self, authenticated: str, from_address: str) -> bool:
        a, f = authenticated.lower(), from_address.lower()
        return a == f or (a, f) in self.send_as

    def submission_limits(self, address: str) -> SubmissionLimits:
        return self.limits.get(address.lower(), SubmissionLimits())

    def token_service(self, claims: dict[str, Any]) -> str:
        return str(claims.get("upn") or claims.get("preferred_username") or "").lower()

    # -- minting ---------------------------------------------------------------------------

    def mint(
        self,
        user: str,
        scp: str = "SMTP.Send",
        *,
        aud: str = OUTLOOK,
        lifetime: float = 3600,
        roles: list[str] | None = None,
    ) -> str:
        now = int(self.now())
        claims: dict[str, Any] = {
            "aud": aud,
            "iss": "https://sts.windows.net/tid/",
            "tid": "00000000-0000-0000-0000-000000000001",
            "iat": now,
            "nbf": now,
            "exp": int(now + lifetime),
        }
        if roles is not None:
            claims["roles"] = roles
            claims["oid"] = "app"
        else:
            claims.update(scp=scp, upn=user, preferred_username=user)
        return self.key.sign(claims)

    def mint_google(self, address: str, lifetime: float = 3600) -> str:
        token = "ya29." + secrets.token_urlsafe(40)
        self.google_tokens[token] = (address.lower(), self.now() + lifetime)
        return token


def make_policy(state: Path, *users: str) -> SmallPolicy:
    return SmallPolicy(key=SigningKey(state), users={u.lower() for u in users})


class RecordingDelivery:
    """interfaces.MailboxDelivery that keeps what it was handed."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def deliver(self, address: str, raw: bytes) -> None:
        with self._lock:
            self.delivered.append((address, raw))

    def to(self, address: str) -> list[bytes]:
        with self._lock:
            return [raw for a, raw in self.delivered if a == address]


def xoauth2(user: str, token: str) -> str:
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def oauthbearer(user: str, token: str, host: str | None = None, port: int | None = None) -> str:
    kv = "".join(f"{k}={v}\x01" for k, v in (("host", host), ("port", port)) if v is not None)
    return f"n,a={user},\x01{kv}auth=Bearer {token}\x01\x01"


class Sasl:
    """authobject for smtplib.auth (str) and imaplib.authenticate (bytes): the response first, then the
    empty (XOAUTH2) or ^A (OAUTHBEARER) reply to an error challenge, recording the challenges."""

    def __init__(
        self, response: str, mechanism: str = "XOAUTH2", *, as_bytes: bool = False
    ) -> None:
        self.response = response
        self.mechanism = mechanism
        self.as_bytes = as_bytes
        self.calls = 0
        self.challenges: list[bytes] = []

    def __call__(self, challenge: bytes | None = None) -> Any:
        self.calls += 1
        if self.calls == 1 and not challenge:
            out = self.response
        else:
            self.challenges.append(challenge or b"")
            out = "\x01" if self.mechanism == "OAUTHBEARER" else ""
        return out.encode() if self.as_bytes else out


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def wait_for(condition: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll `condition` until truthy (bounded in time); return its value or raise AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


SERVICE_SCOPES = {"imap": "IMAP.AccessAsUser.All", "pop3": "POP.AccessAsUser.All"}


class IntrospectionServer:
    """A tiny RFC 7662 endpoint over SmallPolicy, shaped like the sandbox's
    `POST /sandbox/introspect/{imap|pop3}` (form field `token`), on a free loopback port."""

    def __init__(self, policy: SmallPolicy) -> None:
        import http.server
        from urllib.parse import parse_qs

        self.policy = policy
        self.calls: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                service = self.path.rstrip("/").rsplit("/", 1)[-1]
                outer.calls.append(service)
                body = json.dumps(outer.introspect((form.get("token") or [""])[0], service))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/sandbox/introspect"

    def introspect(self, token: str, service: str) -> dict[str, Any]:
        try:
            claims = self.policy.verify_access_token(token)
        except InvalidToken:
            return {"active": False}
        if claims.get("aud") == GOOGLE:
            user = str(claims.get("email", ""))
        else:
            scopes = {s.rsplit("/", 1)[-1] for s in str(claims.get("scp", "")).split()}
            if SERVICE_SCOPES.get(service) not in scopes:
                return {"active": False}
            user = self.policy.token_service(claims)
        if not self.policy.mailbox_exists(user):
            return {"active": False}
        return {"active": True, "username": user, "exp": int(claims["exp"])}

    def start(self) -> IntrospectionServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- real tokens from a running Sandbox (identity side) ---------------------------------------

MS_REDIRECT = "http://127.0.0.1:8000/oauth/microsoft/callback"
RESOURCE = "https://outlook.office.com/"


def outlook_token(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, *scopes: str) -> str:
    """An access token for the demo user, through MSAL's auth-code flow and the sign-in pages."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sandbox.ca_file))
    demo = sandbox.demo
    app = msal.ConfidentialClientApplication(
        demo["client_id"],
        client_credential=demo["client_secret"],
        authority=f"{sandbox.https_url}/{demo['tenant_id']}",
        verify=str(sandbox.ca_file),
        instance_discovery=False,
    )
    flow = app.initiate_auth_code_flow(
        [RESOURCE + s for s in scopes], redirect_uri=MS_REDIRECT, login_hint=demo["user"]
    )
    with httpx.Client(verify=ca_context(sandbox.ca_file)) as browser:
        final = complete_sign_in(browser, flow["auth_uri"], demo["user"], demo["password"])
    result = app.acquire_token_by_auth_code_flow(flow, redirect_params(final))
    assert "access_token" in result, result
    token: str = result["access_token"]
    return token


def google_token(sandbox: Sandbox) -> str:
    """A Google access token for the demo Gmail user, through the sandbox's Google consent flow."""
    demo = sandbox.demo
    redirect = "http://127.0.0.1:8000/oauth/google/callback"
    query = httpx.QueryParams(
        client_id=demo["google_client_id"],
        redirect_uri=redirect,
        response_type="code",
        scope="https://mail.google.com/",
        access_type="offline",
        state="s",
    )
    with httpx.Client(verify=ca_context(sandbox.ca_file)) as browser:
        final = complete_sign_in(
            browser,
            f"{sandbox.google_auth_url}?{query}",
            demo["google_user"],
            demo["google_password"],
        )
        code = redirect_params(final)["code"]
        response = browser.post(
            sandbox.google_token_url,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect,
                "client_id": demo["google_client_id"],
                "client_secret": demo["google_client_secret"],
            },
        )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token
