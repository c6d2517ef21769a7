"""Google's OAuth 2.0 endpoints: /o/oauth2/v2/auth (+ sign-in and consent pages), /token, /revoke, /tokeninfo.

Shapes follow Google's web-server OAuth guide and its notes on refresh-token expiry:
https://developers.google.com/identity/protocols/oauth2/web-server and
https://developers.google.com/identity/protocols/oauth2; docs/sandbox.md lists each behaviour.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from werkzeug.wrappers import Request, Response

from mailgate.sandbox import pages
from mailgate.sandbox.codes import CODE_LIFETIME, digest, pkce_challenge, random_token
from mailgate.sandbox.google_accounts import (
    GOOGLE_ACCESS_TOKEN_LIFETIME,
    GOOGLE_REFRESH_MAX_INACTIVE,
    GOOGLE_TESTING_REFRESH_LIFETIME,
)

if TYPE_CHECKING:
    from mailgate.sandbox.state import SandboxState

MAIL_SCOPE = "https://mail.google.com/"
# Scopes the sandbox knows; the OpenID Connect short names and their userinfo URL forms.
KNOWN_SCOPES = {
    MAIL_SCOPE: "Read, compose, send, and permanently delete all your email from Gmail",
    "openid": "Associate you with your personal info on Google",
    "email": "See your primary Google Account email address",
    "profile": "See your personal info, including any personal info you've made publicly available",
    "https://www.googleapis.com/auth/userinfo.email": "See your primary Google Account email address",
    "https://www.googleapis.com/auth/userinfo.profile": "See your personal info",
    "https://www.googleapis.com/auth/gmail.send": "Send email on your behalf",
}
# Scopes whose grants are exempt from the 7-day expiry of Testing projects.
# Reference: https://developers.google.com/identity/protocols/oauth2 (refresh token expiration)
IDENTITY_SCOPES = {
    "openid",
    "email",
    "profile",
    "https://www.googleapis.com/auth/userinfo.email",
    "https://www.googleapis.com/auth/userinfo.profile",
}


class GoogleError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json; charset=utf-8")


class GoogleSignIn:
    """The browser side: /o/oauth2/v2/auth, its sign-in and consent pages, and the authorization code."""

    SESSION_COOKIE = "SID"

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.sessions: dict[str, str] = {}

    def _page_error(self, error: str, message: str, status: int = 400) -> Response:
        self.state.count(f"google_{error}")
        return Response(
            pages.google_error(error=error, message=message, status=status),
            status=status,
            content_type="text/html; charset=utf-8",
        )

    def _redirect(self, ctx: dict[str, Any], fields: dict[str, str]) -> Response:
        if ctx.get("state") is not None:
            fields["state"] = ctx["state"]
        uri = ctx["redirect_uri"]
        response = Response(status=302)
        response.headers["Location"] = uri + ("&" if "?" in uri else "?") + urlencode(fields)
        return response

    def auth(self, request: Request) -> Response:
        params = request.values
        client_id = params.get("client_id", "")
        project = self.state.google.project(client_id)
        if not client_id:
            return self._page_error("invalid_request", "Missing required parameter: client_id")
        if project is None:
            return self._page_error("invalid_client", "The OAuth client was not found.", 401)
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_uri:
            return self._page_error("invalid_request", "Missing required parameter: redirect_uri")
        # "the http or https scheme, case, and trailing slash ('/') must all match."
        if redirect_uri not in project["redirect_uris"]:
            return self._page_error(
                "redirect_uri_mismatch",
                f"You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 policy."
                f" If you're the app developer, register the redirect URI in the Google Cloud Console."
                f" Request details: redirect_uri={redirect_uri}",
            )
        ctx: dict[str, Any] = {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "state": params.get("state"),
            "scope": params.get("scope", ""),
            "access_type": params.get("access_type", "online"),
            "prompt": params.get("prompt", "").split(),
            "login_hint": params.get("login_hint", ""),
            "code_challenge": params.get("code_challenge"),
            "code_challenge_method": params.get("code_challenge_method") or "plain",
            "nonce": params.get("nonce"),
            "created": time.monotonic(),
        }
        if params.get("response_type") != "code":
            return self._page_error(
                "unsupported_response_type",
                f"Invalid response_type: {params.get('response_type', '')}",
            )
        scopes = ctx["scope"].split()
        if not scopes:
            return self._page_error("invalid_request", "Missing required parameter: scope")
        unknown = [s for s in scopes if s not in KNOWN_SCOPES]
        if unknown:
            return self._page_error(
                "invalid_scope", f"Some requested scopes were invalid. {{invalid={unknown}}}"
            )
        if ctx["access_type"] not in ("online", "offline"):
            return self._page_error("invalid_request", f"Invalid access_type: {ctx['access_type']}")
        if "none" in ctx["prompt"] and len(ctx["prompt"]) > 1:
            return self._page_error(
                "invalid_request", "prompt=none must not be combined with other values"
            )
        ctx_id = self.state.pending.add(ctx)
        email = self.sessions.get(request.cookies.get(self.SESSION_COOKIE, ""))
        if (
            email is None
            or "select_account" in ctx["prompt"]
            or (ctx["login_hint"] and ctx["login_hint"].lower() != email)
        ):
            if "none" in ctx["prompt"]:
                return self._redirect(ctx, {"error": "login_required"})
            return self._sign_in_page(ctx_id, project, ctx["login_hint"])
        return self._after_sign_in(ctx_id, ctx, project, email)

    def _sign_in_page(
        self, ctx_id: str, project: dict[str, Any], username: str, error: str = ""
    ) -> Response:
        html = pages.sign_in(
            action="/o/oauth2/v2/auth/signin",
            ctx=ctx_id,
            username=username,
            error=error,
            app_name=project["name"],
            brand="Google",
            button="Next",
        )
        return Response(html, content_type="text/html; charset=utf-8")

    def _interaction(
        self, request: Request
    ) -> tuple[str, dict[str, Any], dict[str, Any]] | Response:
        ctx_id = request.form.get("ctx", "")
        ctx = self.state.pending.get(ctx_id)
        project = self.state.google.project(ctx["client_id"]) if ctx else None
        if ctx is None or project is None:
            return self._page_error(
                "invalid_request", "The sign-in request expired. Start again from the app."
            )
        return ctx_id, ctx, project

    def sign_in(self, request: Request) -> Response:
        found = self._interaction(request)
        if isinstance(found, Response):
            return found
        ctx_id, ctx, project = found
        email = request.form.get("username", "").strip().lower()
        user = self.state.google.user(email)
        if user is None:
            return self._sign_in_page(ctx_id, project, email, "Couldn't find your Google Account")
        if not secrets.compare_digest(
            user["password"].encode(), request.form.get("password", "").encode()
        ):
            return self._sign_in_page(
                ctx_id,
                project,
                email,
                "Wrong password. Try again or click Forgot password to reset it.",
            )
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = email
        response = self._after_sign_in(ctx_id, ctx, project, email)
        response.set_cookie(self.SESSION_COOKIE, sid, httponly=True, samesite="Lax", path="/")
        return response

    def _after_sign_in(
        self, ctx_id: str, ctx: dict[str, Any], project: dict[str, Any], email: str
    ) -> Response:
        ctx["email"] = email
        granted = self.state.google.consents(email, ctx["client_id"])
        wanted = set(ctx["scope"].split())
        if "consent" in ctx["prompt"] or not wanted <= granted:
            if "none" in ctx["prompt"]:
                return self._redirect(ctx, {"error": "consent_required"})
            items = [(KNOWN_SCOPES[s], "") for s in ctx["scope"].split()]
            html = pages.consent(
                action="/o/oauth2/v2/auth/consent",
                ctx=ctx_id,
                app_name=project["name"],
                publisher=f"{project['name']} wants to access your Google Account",
                user=email,
                permissions=items,
                brand="Google",
                accept="Continue",
                heading=f"{project['name']} wants access to your Google Account",
            )
            return Response(html, content_type="text/html; charset=utf-8")
        return self._issue_code(ctx, first_consent=False)

    def consent(self, request: Request) -> Response:
        found = self._interaction(request)
        if isinstance(found, Response):
            return found
        ctx_id, ctx, _project = found
        self.state.pending.pop(ctx_id)
        if "email" not in ctx:
            return self._page_error("invalid_request", "Sign in first.")
        if request.form.get("decision") != "accept":
            return self._redirect(ctx, {"error": "access_denied"})
        self.state.google.add_consent(ctx["email"], ctx["client_id"], set(ctx["scope"].split()))
        return self._issue_code(ctx, first_consent=True)

    def _issue_code(self, ctx: dict[str, Any], *, first_consent: bool) -> Response:
        code = random_token("4/0A", 70)
        with self.state.store.change() as data:
            data["google"]["codes"][digest(code)] = {
                "client_id": ctx["client_id"],
                "redirect_uri": ctx["redirect_uri"],
                "email": ctx["email"],
                "scope": ctx["scope"],
                # "The refresh_token is only returned on the first authorization" unless re-consented.
                "refresh": ctx["access_type"] == "offline" and first_consent,
                "challenge": ctx["code_challenge"],
                "method": ctx["code_challenge_method"],
                "nonce": ctx["nonce"],
                "issued_at": self.state.now(),
                "used": False,
            }
        return self._redirect(ctx, {"code": code, "scope": ctx["scope"]})


class GoogleTokens:
    """The server side: /token (code and refresh grants), /revoke and /tokeninfo."""

    def __init__(self, state: SandboxState, stopping: threading.Event) -> None:
        self.state = state
        self.stopping = stopping

    def token(self, request: Request) -> Response:
        form = request.form
        grant_type = form.get("grant_type", "")
        self.state.count(
            "google_token_requests", f"google_token_requests_{grant_type or 'missing'}"
        )
        fault = self.state.faults.apply(self.stopping)
        if fault is not None:
            error = "internal_failure" if fault.status == 500 else "temporarily_unavailable"
            return _json({"error": error, "error_description": "Backend Error"}, fault.status)
        try:
            project = self._authenticate_client(request)
            if not grant_type:
                raise GoogleError("invalid_request", "Missing required parameter: grant_type")
            if grant_type == "authorization_code":
                body = self._redeem_code(project, form)
            elif grant_type == "refresh_token":
                body = self._refresh(project, form)
            else:
                raise GoogleError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        except GoogleError as exc:
            self.state.count(f"google_{exc.error}")
            return _json({"error": exc.error, "error_description": exc.description}, exc.status)
        return _json(body)

    def _authenticate_client(self, request: Request) -> dict[str, Any]:
        client_id = request.form.get("client_id")
        secret = request.form.get("client_secret")
        if request.authorization and request.authorization.type == "basic":
            client_id = client_id or request.authorization.username
            secret = secret or request.authorization.password
        project = self.state.google.project(client_id or "")
        if (
            project is None
            or not secret
            or not secrets.compare_digest(project["client_secret"].encode(), secret.encode())
        ):
            raise GoogleError("invalid_client", "Unauthorized", 401)
        return project

    def _redeem_code(self, project: dict[str, Any], form: Any) -> dict[str, Any]:
        code = form.get("code")
        if not code:
            raise GoogleError("invalid_request", "Missing required parameter: code")
        with self.state.store.change() as data:
            record = data["google"]["codes"].get(digest(code))
            if (
                record is None
                or record["used"]
                or record["client_id"] != project["client_id"]
                or self.state.now() - record["issued_at"] > CODE_LIFETIME
                or record["redirect_uri"] != form.get("redirect_uri")
            ):
                raise GoogleError("invalid_grant", "Bad Request")
            if record["challenge"]:
                verifier = form.get("code_verifier", "")
                computed = pkce_challenge(verifier, record["method"])
                if not verifier:
                    raise GoogleError("invalid_grant", "Missing code verifier.")
                if not secrets.compare_digest(computed, record["challenge"]):
                    raise GoogleError("invalid_grant", "Invalid code verifier.")
            record["used"] = True
            record = dict(record)
        body = self._access_token(project, record["email"], record["scope"], nonce=record["nonce"])
        if record["refresh"]:
            token = random_token("1//0", 100)
            with self.state.store.change() as data:
                data["google"]["refresh_tokens"][digest(token)] = {
                    "client_id": project["client_id"],
                    "email": record["email"],
                    "scope": record["scope"],
                    "issued_at": self.state.now(),
                    "last_used": self.state.now(),
                    "revoked": False,
                    "testing": project["publishing_status"] == "testing"
                    and not set(record["scope"].split()) <= IDENTITY_SCOPES,
                }
            body["refresh_token"] = token
        return body

    def _refresh(self, project: dict[str, Any], form: Any) -> dict[str, Any]:
        token = form.get("refresh_token")
        if not token:
            raise GoogleError("invalid_request", "Missing required parameter: refresh_token")
        now = self.state.now()
        with self.state.store.change() as data:
            record = data["google"]["refresh_tokens"].get(digest(token))
            if record is None:
                raise GoogleError("invalid_grant", "Bad Request")
            if record["client_id"] != project["client_id"]:
                raise GoogleError("unauthorized_client", "Unauthorized")
            dead = (
                record["revoked"]
                or (
                    record["testing"]
                    and now - record["issued_at"] > GOOGLE_TESTING_REFRESH_LIFETIME
                )
                or now - record["last_used"] > GOOGLE_REFRESH_MAX_INACTIVE
            )
            if dead:
                raise GoogleError("invalid_grant", "Token has been expired or revoked.")
            record["last_used"] = now
            record = dict(record)
        # Google does not rotate refresh tokens: the answer has no refresh_token.
        return self._access_token(
            project, record["email"], record["scope"], nonce=None, refresh_digest=digest(token)
        )

    def _access_token(
        self,
        project: dict[str, Any],
        email: str,
        scope: str,
        *,
        nonce: str | None,
        refresh_digest: str | None = None,
    ) -> dict[str, Any]:
        token = "ya29." + secrets.token_urlsafe(120)
        now = self.state.now()
        with self.state.store.change() as data:
            tokens = data["google"]["access_tokens"]
            for key in [k for k, v in tokens.items() if v["exp"] < now - 86400]:
                del tokens[key]
            tokens[digest(token)] = {
                "client_id": project["client_id"],
                "email": email,
                "scope": scope,
                "exp": now + GOOGLE_ACCESS_TOKEN_LIFETIME,
                "revoked": False,
                "refresh": refresh_digest,
            }
        body: dict[str, Any] = {
            "access_token": token,
            "expires_in": GOOGLE_ACCESS_TOKEN_LIFETIME,
            "scope": scope,
            "token_type": "Bearer",
        }
        if "openid" in scope.split():
            user = self.state.google.user(email)
            assert user is not None, "a grant outlives its Google user"
            claims = {
                "iss": "https://accounts.google.com",
                "azp": project["client_id"],
                "aud": project["client_id"],
                "sub": user["sub"],
                "email": email,
                "email_verified": True,
                "name": user["name"],
                "iat": int(now),
                "exp": int(now) + 3599,
            }
            if nonce:
                claims["nonce"] = nonce
            body["id_token"] = self.state.signing_key.sign(claims)
        return body

    def revoke(self, request: Request) -> Response:
        """Revoking an access token or a refresh token ends the whole grant."""
        token = request.values.get("token", "")
        key = digest(token)
        with self.state.store.change() as data:
            store = data["google"]
            record = store["refresh_tokens"].get(key) or store["access_tokens"].get(key)
            if record is None or record.get("revoked"):
                return _json(
                    {"error": "invalid_token", "error_description": "Token expired or revoked"}, 400
                )
            email, client_id = record["email"], record["client_id"]
            for group in ("refresh_tokens", "access_tokens"):
                for item in store[group].values():
                    if item["email"] == email and item["client_id"] == client_id:
                        item["revoked"] = True
            store["consents"].pop(f"{email}|{client_id}", None)
        self.state.count("google_revocations")
        return _json({})

    def tokeninfo(self, request: Request) -> Response:
        token = request.values.get("access_token", "")
        record = self.state.google.access_token(token)
        now = self.state.now()
        if record is None or record["revoked"] or record["exp"] <= now:
            return _json({"error": "invalid_token", "error_description": "Invalid Value"}, 400)
        return _json(
            {
                "azp": record["client_id"],
                "aud": record["client_id"],
                "scope": record["scope"],
                "exp": str(int(record["exp"])),
                "expires_in": str(int(record["exp"] - now)),
                "email": record["email"],
                "email_verified": "true",
                "access_type": "offline",
            }
        )


class GoogleOAuth:
    """Google's authorization server over a `SandboxState`: `sign_in` (browser) and `tokens` (server)."""

    def __init__(self, state: SandboxState, stopping: threading.Event) -> None:
        self.sign_in = GoogleSignIn(state)
        self.tokens = GoogleTokens(state, stopping)
