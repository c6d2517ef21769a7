"""After sign-in: may this user use this app here, the consent page and its answer, and the authorization code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from mailgate.sandbox import pages
from mailgate.sandbox.codes import CODE_LIFETIME, digest, random_token
from mailgate.sandbox.microsoft.errors import AADError, Replies
from mailgate.sandbox.microsoft.lookup import pending_request
from mailgate.sandbox.microsoft.scopes import Scopes, consented, requested_keys

if TYPE_CHECKING:
    from mailgate.sandbox.state import SandboxState


class ConsentStep:
    """From a signed-in user to the code: assignment and policy checks, consent (POST /<tenant>/consent)."""

    def __init__(self, state: SandboxState, replies: Replies) -> None:
        self.state = state
        self.replies = replies

    def after_sign_in(
        self,
        request: Request,
        ctx_id: str,
        ctx: dict[str, Any],
        app: dict[str, Any],
        user: dict[str, Any],
    ) -> Response:
        """The user is known: check they may sign in here, then ask for consent or issue the code."""
        try:
            self._check_user_may_sign_in(ctx, app, user)
        except AADError as exc:
            return self.replies.error_page(request, exc)
        ctx["oid"] = user["oid"]
        needed = requested_keys(ctx["scopes"]) - consented(self.state.directory, app, user)
        if needed or ctx["prompt"] == "consent":
            if ctx["prompt"] == "none":
                return self.replies.redirect_error(
                    request,
                    ctx,
                    AADError(
                        65001, "consent_required", client_id=app["client_id"], app_name=app["name"]
                    ),
                )
            return self._consent_page(ctx_id, ctx, app, user)
        return self._issue_code(ctx, app, user)

    def _check_user_may_sign_in(
        self, ctx: dict[str, Any], app: dict[str, Any], user: dict[str, Any]
    ) -> None:
        tenant = ctx["tenant"]
        consumer = user["kind"] == "consumer"
        idp = "live.com" if consumer else f"https://sts.windows.net/{user['tenant_id']}/"
        mismatch = (
            (tenant["kind"] == "consumers" and not consumer)
            or (tenant["kind"] == "organizations" and consumer)
            or (tenant["kind"] == "tenant" and tenant["id"] != user["tenant_id"])
            or (app["audience"] == "AzureADMyOrg" and user["tenant_id"] != app["tenant_id"])
            or (app["audience"] == "AzureADMultipleOrgs" and consumer)
            or (app["audience"] == "PersonalMicrosoftAccount" and not consumer)
        )
        if mismatch:
            raise AADError(
                50020,
                "invalid_request",
                user=user["upn"],
                idp=idp,
                tenant=tenant["id"] or app["tenant_id"],
                client_id=app["client_id"],
                app_name=app["name"],
            )
        user_tenant = self.state.directory.tenant(user["tenant_id"]) or {}
        if user_tenant.get("conditional_access_block"):
            raise AADError(53003, "access_denied")
        if app["assignment_required"] and user["oid"] not in app["assigned_users"]:
            raise AADError(
                50105,
                "invalid_request",
                app_name=app["name"],
                client_id=app["client_id"],
                user=user["upn"],
            )

    def _consent_page(
        self, ctx_id: str, ctx: dict[str, Any], app: dict[str, Any], user: dict[str, Any]
    ) -> Response:
        scopes: Any = ctx["scopes"]
        items: list[tuple[str, str]] = []
        for entry in scopes.resources.values():
            items.extend((pages.PERMISSION_WORDS.get(p, p), p) for p in entry["perms"])
        items.extend((pages.PERMISSION_WORDS[s], s) for s in scopes.oidc)
        publisher = "unverified" if app["tenant_id"] else ""
        html = pages.consent(
            action=f"/{ctx['segment']}/consent",
            ctx=ctx_id,
            app_name=app["name"],
            publisher=f"{publisher} · mailgate sandbox",
            user=user["upn"],
            permissions=items,
        )
        return Response(html, content_type="text/html; charset=utf-8")

    def consent(self, request: Request, segment: str) -> Response:
        """POST of the consent page: Accept records the consent, Cancel redirects access_denied."""
        found = pending_request(self.state, self.replies, request)
        if isinstance(found, Response):
            return found
        ctx_id, ctx, app = found
        user = self.state.directory.user_by_oid(ctx.get("oid", ""))
        if user is None:
            return self.replies.error_page(
                request, AADError(90014, "invalid_request", name="username")
            )
        self.state.pending.pop(ctx_id)
        if request.form.get("decision") != "accept":
            return self.replies.redirect_error(request, ctx, AADError(65004, "access_denied"))
        with self.state.store.change() as data:
            key = f"{user['oid']}|{app['client_id']}"
            keys = set(data["consents"].get(key, [])) | requested_keys(ctx["scopes"])
            data["consents"][key] = sorted(keys)
        return self._issue_code(ctx, app, user)

    def _issue_code(
        self, ctx: dict[str, Any], app: dict[str, Any], user: dict[str, Any]
    ) -> Response:
        code = random_token("1.A", 180)
        scopes: Scopes = ctx["scopes"]
        user_tenant = self.state.directory.tenant(user["tenant_id"]) or {}
        with self.state.store.change() as data:
            now = self.state.now()
            # Drop codes that can no longer be redeemed so the state file stays small.
            for key in [
                k for k, v in data["codes"].items() if v["issued_at"] < now - 2 * CODE_LIFETIME
            ]:
                del data["codes"][key]
            data["codes"][digest(code)] = {
                "client_id": app["client_id"],
                "redirect_uri": ctx["redirect_uri"],
                "oid": user["oid"],
                "tenant_id": user["tenant_id"],
                "oidc": scopes.oidc,
                "resources": scopes.resources,
                "challenge": ctx["code_challenge"],
                "method": ctx["code_challenge_method"],
                "nonce": ctx["nonce"],
                "issued_at": now,
                "used": False,
                "mfa": bool(user_tenant.get("mfa_required")),
            }
        self.state.count("codes_issued")
        return self.replies.redirect(ctx, {"code": code})
