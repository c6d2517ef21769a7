"""The browser side of Entra's authorization endpoint: the authorize request, the sign-in page, sessions, logout."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from mailgate.sandbox import pages
from mailgate.sandbox.microsoft.consent import ConsentStep
from mailgate.sandbox.microsoft.errors import AADError, Replies
from mailgate.sandbox.microsoft.lookup import (
    find_app,
    pending_request,
    redirect_matches,
    resolve_tenant,
)
from mailgate.sandbox.microsoft.scopes import parse_scopes

if TYPE_CHECKING:
    from mailgate.sandbox.state import SandboxState


class SignIn:
    """GET/POST /<tenant>/oauth2/v2.0/authorize, POST /<tenant>/login, /<tenant>/oauth2/v2.0/logout."""

    SESSION_COOKIE = "ESTSAUTH"

    def __init__(self, state: SandboxState, replies: Replies, consent: ConsentStep) -> None:
        self.state = state
        self.replies = replies
        self.consent = consent

    def authorize(self, request: Request, segment: str) -> Response:
        params = request.values
        # Errors about the tenant, the client or the redirect URI are shown on a page: never
        # redirect to an unverified URI (RFC 6749 §4.1.2.1).
        try:
            tenant = resolve_tenant(self.state, segment)
            app = find_app(self.state, params.get("client_id"), tenant)
            redirect_uri = params.get("redirect_uri")
            if not app["redirect_uris"]:
                raise AADError(500113, "invalid_request")
            if not redirect_uri:
                raise AADError(900971, "invalid_request")
            if not any(redirect_matches(r, redirect_uri) for r in app["redirect_uris"]):
                raise AADError(
                    50011, "invalid_request", redirect_uri=redirect_uri, client_id=app["client_id"]
                )
        except AADError as exc:
            return self.replies.error_page(request, exc)
        mode = params.get("response_mode") or "query"
        ctx: dict[str, Any] = {
            "tenant": tenant,
            "segment": segment,
            "client_id": app["client_id"],
            "redirect_uri": redirect_uri,
            "response_mode": mode if mode in ("query", "fragment", "form_post") else "query",
            "state": params.get("state"),
            "nonce": params.get("nonce"),
            "login_hint": params.get("login_hint", ""),
            "prompt": params.get("prompt", ""),
            "code_challenge": params.get("code_challenge"),
            "code_challenge_method": params.get("code_challenge_method") or "plain",
            "scope": params.get("scope", ""),
            "created": time.monotonic(),
        }
        try:
            if mode not in ("query", "fragment", "form_post"):
                raise AADError(70007, "invalid_request", app_name=app["name"], mode=mode)
            response_type = params.get("response_type", "")
            if not response_type:
                raise AADError(900144, "invalid_request", name="response_type")
            if response_type != "code":
                if "id_token" in response_type.split() or "token" in response_type.split():
                    raise AADError(700054, "unsupported_response_type")
                raise AADError(9002313, "invalid_request")
            if not ctx["scope"].strip():
                raise AADError(900144, "invalid_request", name="scope")
            if ctx["code_challenge_method"] not in ("plain", "S256"):
                raise AADError(9002313, "invalid_request")
            if ctx["prompt"] not in ("", "login", "none", "consent", "select_account"):
                raise AADError(9002313, "invalid_request")
            if ctx["prompt"] == "select_account" and ctx["login_hint"]:
                # "You can't use both login_hint and select_account."
                raise AADError(9002313, "invalid_request")
            ctx["scopes"] = parse_scopes(ctx["scope"], app, tenant["label"])
        except AADError as exc:
            return self.replies.redirect_error(request, ctx, exc)
        ctx_id = self.state.pending.add(ctx)
        session = self._session(request)
        user = self.state.directory.user_by_oid(session["oid"]) if session else None
        must_sign_in = (
            user is None
            or ctx["prompt"] in ("login", "select_account")
            or (ctx["login_hint"] and ctx["login_hint"].lower() != user["upn"])
        )
        if must_sign_in:
            if ctx["prompt"] == "none":
                return self.replies.redirect_error(request, ctx, AADError(50058, "login_required"))
            return self._sign_in_page(ctx_id, ctx, app, username=ctx["login_hint"])
        assert user is not None
        return self.consent.after_sign_in(request, ctx_id, ctx, app, user)

    def _session(self, request: Request) -> dict[str, Any] | None:
        sid = request.cookies.get(self.SESSION_COOKIE)
        with self.state.store.lock:
            return self.state.sessions.get(sid) if sid else None

    def _sign_in_page(
        self,
        ctx_id: str,
        ctx: dict[str, Any],
        app: dict[str, Any],
        *,
        username: str,
        error: str = "",
    ) -> Response:
        html = pages.sign_in(
            action=f"/{ctx['segment']}/login",
            ctx=ctx_id,
            username=username,
            error=error,
            app_name=app["name"],
        )
        return Response(html, status=200, content_type="text/html; charset=utf-8")

    def login(self, request: Request, segment: str) -> Response:
        """POST of the sign-in form."""
        found = pending_request(self.state, self.replies, request)
        if isinstance(found, Response):
            return found
        ctx_id, ctx, app = found
        username = request.form.get("username", "").strip().lower()
        password = request.form.get("password", "")
        user = self.state.directory.user(username) if username else None
        if user is None:
            exc = AADError(50034, "invalid_grant", user=username, tenant=ctx["tenant"]["label"])
            self.state.count("aadsts_50034")
            return self._sign_in_page(
                ctx_id,
                ctx,
                app,
                username=username,
                error=f"This username may be incorrect. AADSTS{exc.code}: {exc.message}",
            )
        if user["kind"] == "shared":
            exc = AADError(50057, "invalid_grant")
            self.state.count("aadsts_50057")
            return self._sign_in_page(
                ctx_id, ctx, app, username=username, error=f"AADSTS50057: {exc.message}"
            )
        if not secrets.compare_digest(user["password"].encode(), password.encode()):
            exc = AADError(50126, "invalid_grant")
            self.state.count("aadsts_50126")
            return self._sign_in_page(
                ctx_id,
                ctx,
                app,
                username=username,
                error=f"Your account or password is incorrect. AADSTS{exc.code}: {exc.message}",
            )
        sid = secrets.token_urlsafe(32)
        with self.state.store.lock:
            self.state.sessions[sid] = {"oid": user["oid"], "auth_time": int(self.state.now())}
        response = self.consent.after_sign_in(request, ctx_id, ctx, app, user)
        response.set_cookie(self.SESSION_COOKIE, sid, httponly=True, samesite="Lax", path="/")
        return response

    def logout(self, request: Request, segment: str) -> Response:
        sid = request.cookies.get(self.SESSION_COOKIE)
        with self.state.store.lock:
            self.state.sessions.pop(sid or "", None)
        target = request.values.get("post_logout_redirect_uri")
        response = (
            Response(status=302)
            if target
            else Response(
                pages.page("Signed out", "<h1>You signed out of your account</h1>"),
                content_type="text/html; charset=utf-8",
            )
        )
        if target:
            response.headers["Location"] = target
        response.delete_cookie(self.SESSION_COOKIE, path="/")
        return response
