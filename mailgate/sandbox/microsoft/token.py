"""Entra's token endpoint: client authentication and the three grants (code, refresh token, client credentials)."""

from __future__ import annotations

import secrets
import threading
from typing import TYPE_CHECKING, Any

from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request, Response

from mailgate.sandbox.codes import CODE_LIFETIME, digest, pkce_challenge
from mailgate.sandbox.entra import REFRESH_TOKEN_MAX_INACTIVE
from mailgate.sandbox.microsoft.errors import AADError, Replies, json_response, timestamp
from mailgate.sandbox.microsoft.issuer import TokenIssuer
from mailgate.sandbox.microsoft.lookup import find_app, resolve_tenant
from mailgate.sandbox.microsoft.scopes import RESOURCE_URL, Scopes, consented, parse_scopes

if TYPE_CHECKING:
    from mailgate.sandbox.state import SandboxState


def _required(form: MultiDict[str, str], name: str) -> str:
    """A parameter the grant needs, else AADSTS900144 naming it."""
    value = form.get(name)
    if not value:
        raise AADError(900144, "invalid_request", name=name)
    return value


class TokenEndpoint:
    """POST /<tenant>/oauth2/v2.0/token: checks the request and the grant, then has the issuer answer."""

    def __init__(
        self,
        state: SandboxState,
        replies: Replies,
        issuer: TokenIssuer,
        stopping: threading.Event,
    ) -> None:
        self.state = state
        self.replies = replies
        self.issuer = issuer
        self.stopping = stopping

    def token(self, request: Request, segment: str) -> Response:
        form = request.form
        grant_type = form.get("grant_type", "")
        self.state.count("token_requests", f"token_requests_{grant_type or 'missing'}")
        fault = self.state.faults.apply(self.stopping)
        if fault is not None:
            code, error = (
                (50000, "server_error")
                if fault.status == 500
                else (90033, "temporarily_unavailable")
            )
            return self.replies.json_error(request, AADError(code, error, status=fault.status))
        basic = request.authorization is not None and request.authorization.type == "basic"
        try:
            if request.method != "POST":
                raise AADError(
                    900561, "invalid_request", valid_verbs="POST", invalid_verb=request.method
                )
            tenant = resolve_tenant(self.state, segment)
            client_id = form.get("client_id") or (
                request.authorization.username if basic and request.authorization else None
            )
            app = find_app(self.state, client_id, tenant)
            if not grant_type:
                raise AADError(900144, "invalid_request", name="grant_type")
            if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
                raise AADError(70003, "unsupported_grant_type", grant_type=grant_type)
            self._authenticate_client(request, app)
            if grant_type == "authorization_code":
                body = self._redeem_code(request, app, form)
            elif grant_type == "refresh_token":
                body = self._redeem_refresh_token(request, app, form)
            else:
                body = self._client_credentials(request, app, tenant, form)
        except AADError as exc:
            return self.replies.json_error(request, exc, basic_auth=basic)
        self.state.count("tokens_issued")
        response = json_response(body)
        response.headers["Cache-Control"] = "no-store, no-cache"
        response.headers["Pragma"] = "no-cache"
        return response

    def _authenticate_client(self, request: Request, app: dict[str, Any]) -> None:
        form = request.form
        secret = form.get("client_secret")
        if secret is None and request.authorization and request.authorization.type == "basic":
            secret = request.authorization.password
        assertion = form.get("client_assertion")
        # "Treat application as a public client" decides; Web redirect URIs make it confidential.
        # Reference: https://learn.microsoft.com/en-us/troubleshoot/entra/entra-id/app-integration/confidential-client-application-authentication-error-aadsts7000218
        if app["public_client"]:
            if secret or assertion:
                raise AADError(700025, "invalid_client", status=401)
            return
        if assertion:
            # Certificate credentials are not registered in the sandbox; every assertion fails.
            raise AADError(700027, "invalid_client", status=401)
        if not secret:
            raise AADError(7000218, "invalid_client", status=401)
        now = self.state.now()
        for stored in app["secrets"]:
            if secrets.compare_digest(stored["value"].encode(), secret.encode()):
                if stored["expires_at"] <= now:
                    raise AADError(
                        7000222, "invalid_client", status=401, client_id=app["client_id"]
                    )
                return
        raise AADError(7000215, "invalid_client", status=401, client_id=app["client_id"])

    def _redeem_code(
        self, request: Request, app: dict[str, Any], form: MultiDict[str, str]
    ) -> dict[str, Any]:
        code = _required(form, "code")
        _required(form, "redirect_uri")
        with self.state.store.change() as data:
            record = data["codes"].get(digest(code))
            if record is None:
                raise AADError(9002313, "invalid_grant")
            if record["used"]:
                raise AADError(54005, "invalid_grant")
            if record["client_id"] != app["client_id"]:
                raise AADError(70000, "invalid_grant")
            if self.state.now() - record["issued_at"] > CODE_LIFETIME:
                raise AADError(70008, "invalid_grant")
            if record["redirect_uri"] != form.get("redirect_uri"):
                raise AADError(
                    50011,
                    "invalid_grant",
                    redirect_uri=form.get("redirect_uri"),
                    client_id=app["client_id"],
                )
            if record["challenge"]:
                verifier = form.get("code_verifier", "")
                computed = pkce_challenge(verifier, record["method"])
                if not verifier or not secrets.compare_digest(computed, record["challenge"]):
                    raise AADError(501481, "invalid_grant")
            # Single use: a second redemption gets AADSTS54005.
            record["used"] = True
            record = dict(record)
        user = self.state.directory.user_by_oid(record["oid"])
        if user is None:
            raise AADError(70000, "invalid_grant")
        token_scope = form.get("scope")
        if token_scope:
            scopes = parse_scopes(token_scope, app, record["tenant_id"])
            if len(scopes.resources) > 1:
                raise AADError(28000, "invalid_scope", scope=token_scope)
            oidc = scopes.oidc or record["oidc"]
            resource = scopes.first_resource() or next(iter(record["resources"]), None)
        else:
            oidc = record["oidc"]
            resource = next(iter(record["resources"]), None)
        self._check_policies(user, record["mfa"], resource)
        offline = "offline_access" in record["oidc"]
        return self.issuer.user_tokens(
            request,
            app=app,
            user=user,
            resource=resource,
            oidc=oidc,
            nonce=record["nonce"],
            mfa=record["mfa"],
            refresh=offline,
        )

    def _check_policies(self, user: dict[str, Any], mfa_done: bool, resource: str | None) -> None:
        tenant = self.state.directory.tenant(user["tenant_id"]) or {}
        if tenant.get("conditional_access_block"):
            raise AADError(53003, "invalid_grant")
        if tenant.get("mfa_required") and not mfa_done:
            raise AADError(
                50076,
                "invalid_grant",
                resource=RESOURCE_URL.get(resource or "", "00000003-0000-0000-c000-000000000000"),
            )

    def _redeem_refresh_token(
        self, request: Request, app: dict[str, Any], form: MultiDict[str, str]
    ) -> dict[str, Any]:
        token = _required(form, "refresh_token")
        now = self.state.now()
        with self.state.store.change() as data:
            record = data["refresh_tokens"].get(digest(token))
            if record is None:
                raise AADError(9002313, "invalid_grant")
            if record["client_id"] != app["client_id"]:
                raise AADError(70000, "invalid_grant")
            user = self.state.directory.user_by_oid(record["oid"])
            if user is None or record["issued_at"] < user["tokens_valid_after"]:
                raise AADError(
                    50173,
                    "invalid_grant",
                    issued=timestamp(record["issued_at"]),
                    valid_from=timestamp(user["tokens_valid_after"] if user else now),
                )
            if now - record["last_used"] > REFRESH_TOKEN_MAX_INACTIVE:
                raise AADError(700082, "invalid_grant", issued=timestamp(record["issued_at"]))
            # Rotation: the old refresh token stays valid; using it only resets its inactivity clock.
            record["last_used"] = now
            record = dict(record)
        requested = form.get("scope", "")
        scopes = parse_scopes(requested, app, user["tenant_id"]) if requested else Scopes()
        # "If the scopes specified in this request span multiple resource server, then the
        # Microsoft identity platform returns a token for the resource specified in the first scope."
        resource = scopes.first_resource() or record["resource"]
        wanted = {
            f"{resource}:{p}" for p in scopes.resources.get(resource or "", {}).get("perms", [])
        }
        if not wanted <= consented(self.state.directory, app, user):
            if user["kind"] == "consumer":
                raise AADError(70000, "invalid_grant")
            raise AADError(65001, "invalid_grant", client_id=app["client_id"], app_name=app["name"])
        self._check_policies(user, record["mfa"], resource)
        return self.issuer.user_tokens(
            request,
            app=app,
            user=user,
            resource=resource,
            oidc=scopes.oidc or record["oidc"],
            nonce=None,
            mfa=record["mfa"],
            refresh=True,
        )

    def _client_credentials(
        self,
        request: Request,
        app: dict[str, Any],
        tenant: dict[str, Any],
        form: MultiDict[str, str],
    ) -> dict[str, Any]:
        if tenant["kind"] in ("common", "consumers"):
            raise AADError(9001023, "invalid_request")
        raw = _required(form, "scope")
        items = raw.split()
        if any(not item.endswith("/.default") for item in items):
            raise AADError(1002012, "invalid_scope", scope=raw)
        scopes = parse_scopes(raw, app, tenant["label"])
        if len(scopes.resources) > 1:
            raise AADError(700022, "invalid_scope", scope=raw)
        return self.issuer.app_token(app, tenant, scopes)
