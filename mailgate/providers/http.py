"""The one HTTP seam to identity providers: httpx with timeouts, verified TLS and Authlib's OAuth 2.0 client.

Trust: the system store plus SSL_CERT_FILE (extra trust, e.g. the sandbox CA). Verification is never off.
"""

from __future__ import annotations

import json
import os
import re
import ssl
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx2 as httpx  # Authlib 1.9 builds its OAuth client on httpx2
from authlib.integrations.httpx_client import OAuth2Client
from django.conf import settings

from mailgate.providers.base import TokenSet

DEFAULT_TIMEOUT_SECONDS = 15.0


class TransientHTTPError(Exception):
    """The provider could not be reached or answered 5xx / temporarily_unavailable: try again later."""

    def __init__(self, message: str, *, status: int = 0, error: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class TokenEndpointError(Exception):
    """The token (or revoke) endpoint refused the request with an OAuth error body (RFC 6749 §5.2)."""

    def __init__(
        self,
        *,
        status: int,
        error: str,
        description: str = "",
        codes: list[int] | None = None,
        subtype: str = "",
    ) -> None:
        super().__init__(f"{error}: {first_line(description)}" if description else error)
        self.status = status
        self.error = error
        self.description = description
        self.codes = codes or aadsts_codes(description)
        self.subtype = subtype


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def aadsts_codes(description: str) -> list[int]:
    """AADSTS numbers named in a Microsoft error_description, in order."""
    return [int(n) for n in re.findall(r"AADSTS(\d+)", description or "")]


@cache
def _tls_context(extra_cafile: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if extra_cafile:
        context.load_verify_locations(cafile=extra_cafile)
    return context


def tls_context() -> ssl.SSLContext:
    """A verifying client TLS context: system trust plus the PEM file named by SSL_CERT_FILE."""
    return _tls_context(os.environ.get("SSL_CERT_FILE", "").strip())


def timeout() -> httpx.Timeout:
    seconds = float(getattr(settings, "MAILGATE_HTTP_TIMEOUT", DEFAULT_TIMEOUT_SECONDS))
    return httpx.Timeout(seconds, connect=min(seconds, 5.0))


def _error_from_response(resp: httpx.Response) -> Exception:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error = body["error"]
        description = str(body.get("error_description") or "")
        raw_codes = body.get("error_codes")
        codes = [int(c) for c in raw_codes] if isinstance(raw_codes, list) else None
        if resp.status_code >= 500 or error in ("temporarily_unavailable", "server_error"):
            return TransientHTTPError(
                f"HTTP {resp.status_code} {error}: {first_line(description)}",
                status=resp.status_code,
                error=error,
            )
        return TokenEndpointError(
            status=resp.status_code,
            error=error,
            description=description,
            codes=codes,
            subtype=str(body.get("error_subtype") or ""),
        )
    if resp.status_code >= 500 or resp.status_code == 429:
        return TransientHTTPError(
            f"HTTP {resp.status_code} from {resp.url.host}", status=resp.status_code
        )
    snippet = resp.text[:200].strip()
    return TokenEndpointError(
        status=resp.status_code,
        error="invalid_response",
        description=f"HTTP {resp.status_code} without an OAuth error body: {snippet}",
    )


def _check_token_response(resp: httpx.Response) -> httpx.Response:
    """Authlib compliance hook: turn every non-2xx answer into one of this module's errors."""
    if resp.status_code >= 300:
        raise _error_from_response(resp)
    try:
        body = resp.json()
    except ValueError as exc:
        raise TransientHTTPError(
            f"HTTP {resp.status_code} from {resp.url.host} is not JSON", status=resp.status_code
        ) from exc
    if not isinstance(body, dict) or not body.get("access_token"):
        raise TokenEndpointError(
            status=resp.status_code,
            error="invalid_response",
            description="the token endpoint answered without an access_token",
        )
    return resp


def oauth_client(
    *, client_id: str, client_secret: str, scope: str | None = None, redirect_uri: str = ""
) -> OAuth2Client:
    """Authlib's OAuth2Client over httpx: PKCE S256, client_secret_post, timeouts, verified TLS."""
    client = OAuth2Client(
        client_id=client_id,
        client_secret=client_secret,
        token_endpoint_auth_method="client_secret_post",
        scope=scope,
        redirect_uri=redirect_uri or None,
        code_challenge_method="S256",
        verify=tls_context(),
        timeout=timeout(),
        trust_env=False,
    )
    client.register_compliance_hook("access_token_response", _check_token_response)
    client.register_compliance_hook("refresh_token_response", _check_token_response)
    return client


def call_token_endpoint(client: OAuth2Client, method: str, **kwargs: Any) -> dict[str, Any]:
    """Run `client.fetch_token` / `client.refresh_token`, mapping transport failures to TransientHTTPError."""
    try:
        with client:
            token: dict[str, Any] = dict(getattr(client, method)(**kwargs))
    except httpx.TimeoutException as exc:
        raise TransientHTTPError(
            f"the token endpoint did not answer within {client.timeout.read} seconds"
        ) from exc
    except httpx.TransportError as exc:
        raise TransientHTTPError(f"cannot reach the token endpoint: {exc}") from exc
    return token


def post_form(url: str, data: dict[str, str]) -> httpx.Response:
    """POST a form (e.g. token revocation) through the same seam; transport failures are transient."""
    try:
        with httpx.Client(verify=tls_context(), timeout=timeout(), trust_env=False) as http:
            return http.post(url, data=data, headers={"Accept": "application/json"})
    except httpx.TimeoutException as exc:
        raise TransientHTTPError(f"{url} did not answer in time") from exc
    except httpx.TransportError as exc:
        raise TransientHTTPError(f"cannot reach {url}: {exc}") from exc


def get_json(url: str) -> dict[str, Any]:
    """GET a JSON document (OIDC discovery, JWKS) through the same seam."""
    try:
        with httpx.Client(verify=tls_context(), timeout=timeout(), trust_env=False) as http:
            resp = http.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise TransientHTTPError(f"cannot fetch {url}: {exc}") from exc
    if resp.status_code != 200:
        raise TransientHTTPError(f"HTTP {resp.status_code} from {url}", status=resp.status_code)
    try:
        data = resp.json()
    except json.JSONDecodeError as exc:
        raise TransientHTTPError(f"{url} did not answer JSON") from exc
    if not isinstance(data, dict):
        raise TransientHTTPError(f"{url} did not answer a JSON object")
    return data


@dataclass(frozen=True)
class AuthorizationRequest:
    """The parameters of an authorization code request with PKCE (RFC 6749 4.1.1, RFC 7636 4.3)."""

    client_id: str
    redirect_uri: str
    scope: str
    state: str = field(repr=False)
    code_verifier: str = field(repr=False)
    login_hint: str = ""


def authorization_url(endpoint: str, request: AuthorizationRequest, **params: str) -> str:
    """`endpoint` with the request's parameters, the S256 code challenge and provider `params`."""
    client = oauth_client(
        client_id=request.client_id, client_secret="", redirect_uri=request.redirect_uri
    )
    extra = {"scope": request.scope, **params}
    if request.login_hint:
        extra["login_hint"] = request.login_hint
    url, _ = client.create_authorization_url(
        endpoint, state=request.state, code_verifier=request.code_verifier, **extra
    )
    client.close()
    return str(url)


@dataclass(frozen=True)
class CodeRedemption:
    """An authorization code to redeem, with the PKCE verifier and the app's credentials."""

    client_id: str
    client_secret: str = field(repr=False)
    code: str = field(repr=False)
    code_verifier: str = field(repr=False)
    redirect_uri: str = ""


def redeem(token_url: str, redemption: CodeRedemption, **extra: str) -> TokenSet:
    """The authorization_code grant (RFC 6749 section 4.1.3, PKCE per RFC 7636 section 4.5)."""
    client = oauth_client(
        client_id=redemption.client_id,
        client_secret=redemption.client_secret,
        redirect_uri=redemption.redirect_uri,
    )
    token = call_token_endpoint(
        client,
        "fetch_token",
        url=token_url,
        grant_type="authorization_code",
        code=redemption.code,
        code_verifier=redemption.code_verifier,
        redirect_uri=redemption.redirect_uri,
        **extra,
    )
    return TokenSet.from_response(token)
