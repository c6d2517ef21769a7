"""The tokens Entra issues: access, refresh and id tokens for a user, access tokens for an app."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request

from mailgate.sandbox.codes import b64url, digest, random_token
from mailgate.sandbox.microsoft.scopes import APP_ROLES, RESOURCE_URL, Scopes, consented

if TYPE_CHECKING:
    from mailgate.sandbox.state import SandboxState


class TokenIssuer:
    """Builds the claims, signs them with the sandbox key and stores refresh tokens (as digests)."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def user_tokens(
        self,
        request: Request,
        *,
        app: dict[str, Any],
        user: dict[str, Any],
        resource: str | None,
        oidc: list[str],
        nonce: str | None,
        mfa: bool,
        refresh: bool,
    ) -> dict[str, Any]:
        now = int(self.state.now())
        lifetime = self.state.switches.access_token_lifetime()
        tid = user["tenant_id"]
        granted = consented(self.state.directory, app, user)
        resource = resource or "graph"
        perms = sorted(k.split(":", 1)[1] for k in granted if k.startswith(f"{resource}:"))
        if resource == "graph" and not perms:
            perms = ["User.Read"]
        audience = RESOURCE_URL[resource]
        sub = b64url(hashlib.sha256(f"{user['oid']}|{app['client_id']}".encode()).digest())
        access_claims = {
            **self._access_claims(
                app, audience, tid=tid, now=now, lifetime=lifetime, idtyp="user", oid=user["oid"]
            ),
            "sub": sub,
            "acr": "1",
            "amr": ["pwd", "mfa"] if mfa else ["pwd"],
            "name": user["display_name"],
            "scp": " ".join(perms),
            "unique_name": user["upn"],
            "upn": user["upn"],
            "preferred_username": user["upn"],
        }
        granted_oidc = [s for s in oidc if s in granted or s == "offline_access"]
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(
                [f"{RESOURCE_URL[resource]}/{p}" for p in perms]
                + [s for s in granted_oidc if s != "offline_access"]
                + (["offline_access"] if refresh else [])
            ),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self.state.signing_key.sign(access_claims),
        }
        if refresh:
            token = random_token("1.AQ", 200)
            with self.state.store.change() as data:
                data["refresh_tokens"][digest(token)] = {
                    "client_id": app["client_id"],
                    "oid": user["oid"],
                    "tenant_id": tid,
                    "resource": resource,
                    "oidc": oidc,
                    "issued_at": float(now),
                    "last_used": float(now),
                    "mfa": mfa,
                }
            body["refresh_token"] = token
        if "openid" in oidc:
            id_claims = {
                "aud": app["client_id"],
                "iss": f"{request.host_url.rstrip('/')}/{tid}/v2.0",
                "iat": now,
                "nbf": now,
                "exp": now + 3600,
                "name": user["display_name"],
                "oid": user["oid"],
                "preferred_username": user["upn"],
                "email": user["upn"],
                "sub": sub,
                "tid": tid,
                "uti": secrets.token_urlsafe(16),
                "ver": "2.0",
            }
            if nonce:
                id_claims["nonce"] = nonce
            body["id_token"] = self.state.signing_key.sign(id_claims)
        if request.form.get("client_info") == "1":
            # MSAL asks for client_info to build the account's home_account_id.
            body["client_info"] = b64url(json.dumps({"uid": user["oid"], "utid": tid}).encode())
        return body

    @staticmethod
    def _access_claims(
        app: dict[str, Any],
        audience: str,
        *,
        tid: str,
        now: int,
        lifetime: int,
        idtyp: str,
        oid: str,
    ) -> dict[str, Any]:
        """What every (v1.0) access token carries, a user's or an app's; `sub` defaults to `oid`."""
        return {
            "aud": audience,
            "iss": f"https://sts.windows.net/{tid}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "app_displayname": app["name"],
            "appid": app["client_id"],
            "azp": app["client_id"],
            "appidacr": "1",
            "idtyp": idtyp,
            "oid": oid,
            "sub": oid,
            "tid": tid,
            "uti": secrets.token_urlsafe(16),
            "ver": "1.0",
        }

    def app_token(
        self, app: dict[str, Any], tenant: dict[str, Any], scopes: Scopes
    ) -> dict[str, Any]:
        """The client-credentials answer: an app-only access token for the (one) resource asked for."""
        resource = scopes.first_resource() or "graph"
        tid = tenant["id"] or app["tenant_id"]
        now = int(self.state.now())
        lifetime = self.state.switches.access_token_lifetime()
        # Application permissions count only once an admin of that tenant granted consent;
        # without it Entra still issues a token, without the roles claim.
        roles = (
            [r for r in app["app_permissions"] if r in APP_ROLES[resource]]
            if tid in app["admin_consent_tenants"]
            else []
        )
        sp_oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tid}/{app['client_id']}"))
        claims = self._access_claims(
            app,
            scopes.resources[resource]["aud"],
            tid=tid,
            now=now,
            lifetime=lifetime,
            idtyp="app",
            oid=sp_oid,
        )
        if roles:
            claims["roles"] = roles
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self.state.signing_key.sign(claims),
        }
