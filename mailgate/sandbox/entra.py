"""The sandbox's Microsoft directory: tenants and users (`EntraDirectory`), app registrations (`AppRegistrations`).

The control operations (each exposed as POST /sandbox/control/<name>) check their parameters and
raise `ControlError` naming the one at fault. Records are plain dicts inside the state document.
"""

from __future__ import annotations

import copy
import secrets
import string
import uuid
from typing import Any
from urllib.parse import urlsplit

from mailgate.sandbox.interfaces import SubmissionLimits
from mailgate.sandbox.params import ControlError, as_bool, as_list, as_number, lower, require
from mailgate.sandbox.store import StateStore

# Personal Microsoft accounts live in this tenant (Microsoft's own example in the access-token docs).
# Reference: https://learn.microsoft.com/en-us/entra/identity-platform/access-tokens
MSA_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"

AUDIENCES = (
    "AzureADMyOrg",
    "AzureADMultipleOrgs",
    "AzureADandPersonalMicrosoftAccount",
    "PersonalMicrosoftAccount",
)
DELEGATED_PERMISSIONS = (
    "SMTP.Send",
    "IMAP.AccessAsUser.All",
    "POP.AccessAsUser.All",
    "User.Read",
    "offline_access",
    "openid",
    "email",
    "profile",
)
APPLICATION_PERMISSIONS = ("SMTP.SendAsApp", "IMAP.AccessAsApp", "POP.AccessAsApp")
REFRESH_TOKEN_MAX_INACTIVE = 90 * 86400


def new_secret_value() -> str:
    # Entra secret values look like "abc8Q~<34 characters>"; the "~" is part of the shape.
    alphabet = string.ascii_letters + string.digits + "-_.~"
    head = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(3))
    return head + "8Q~" + "".join(secrets.choice(alphabet) for _ in range(34))


def new_password() -> str:
    words = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(10))
    return f"Sbx-{words}-1"


def public_app(app: dict[str, Any]) -> dict[str, Any]:
    """An app registration without secret values (the portal shows only a hint)."""
    result = copy.deepcopy(app)
    result["secrets"] = [
        {k: v for k, v in secret.items() if k != "value"} for secret in app["secrets"]
    ]
    return result


def check_redirect_uri(uri: str) -> None:
    # "Redirect URIs must begin with the scheme https" except for localhost; max 256 characters.
    # Reference: https://learn.microsoft.com/en-us/entra/identity-platform/reply-url
    parts = urlsplit(uri)
    if len(uri) > 256:
        raise ControlError("uri", "a redirect URI may have at most 256 characters")
    if parts.scheme == "https" and parts.netloc:
        return
    if parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1"):
        return
    raise ControlError(
        "uri",
        f"{uri!r} is not allowed: use https://..., or http:// only for localhost / 127.0.0.1",
    )


class EntraDirectory:
    """Tenants (with their policy switches), users and mailboxes, and what users consented to."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    # -- lookups -----------------------------------------------------------------------------

    def tenant(self, key: str) -> dict[str, Any] | None:
        """A tenant by GUID or verified domain (case-insensitive)."""
        key = key.strip().lower()
        with self.store.lock:
            tenants = self.store.data["tenants"]
            if key in tenants:
                return dict(tenants[key])
            for tenant in tenants.values():
                if key in [d.lower() for d in tenant["domains"]]:
                    return dict(tenant)
        return None

    def user(self, address: str) -> dict[str, Any] | None:
        with self.store.lock:
            user = self.store.data["users"].get(lower(address))
            return copy.deepcopy(user) if user else None

    def user_by_oid(self, oid: str) -> dict[str, Any] | None:
        with self.store.lock:
            for user in self.store.data["users"].values():
                if user["oid"] == oid:
                    return copy.deepcopy(user)
        return None

    def tenant_key(self, value: Any, field: str = "tenant") -> str:
        """The GUID of the tenant `value` names, else ControlError on `field`."""
        tenant = self.tenant(str(value))
        if tenant is None:
            raise ControlError(field, f"no tenant {value!r}: use a tenant ID or a verified domain")
        return str(tenant["id"])

    def user_ref(self, params: dict[str, Any], field: str = "user") -> dict[str, Any]:
        """The stored (mutable) record of the user `params[field]` names; call under the lock."""
        address = lower(str(require(params, field)))
        user = self.store.data["users"].get(address)
        if user is None:
            raise ControlError(field, f"no sandbox user {address}")
        return user

    # -- consents ----------------------------------------------------------------------------

    def consents(self, oid: str, client_id: str) -> set[str]:
        """Scope keys the user consented to for the app (`openid`, `outlook:SMTP.Send`, ...)."""
        with self.store.lock:
            return set(self.store.data["consents"].get(f"{oid}|{client_id}", []))

    def add_consent(self, oid: str, client_id: str, keys: set[str]) -> None:
        with self.store.change() as data:
            key = f"{oid}|{client_id}"
            data["consents"][key] = sorted(set(data["consents"].get(key, [])) | keys)

    # -- tenants -----------------------------------------------------------------------------

    def create_tenant(self, params: dict[str, Any]) -> dict[str, Any]:
        name = str(require(params, "name"))
        domains = [d.lower() for d in as_list("domains", params.get("domains"))]
        if not domains:
            raise ControlError(
                "domains", "at least one verified domain is required, e.g. contoso.example"
            )
        tenant_id = str(params.get("id") or uuid.uuid4()).lower()
        try:
            uuid.UUID(tenant_id)
        except ValueError:
            raise ControlError("id", f"must be a GUID, not {tenant_id!r}") from None
        with self.store.change() as data:
            for domain in domains:
                other = self.tenant(domain)
                if other and other["id"] != tenant_id:
                    raise ControlError(
                        "domains", f"{domain} is already verified in tenant {other['name']}"
                    )
            tenant = data["tenants"].setdefault(
                tenant_id,
                {
                    "id": tenant_id,
                    "name": name,
                    "domains": domains,
                    "smtp_auth_disabled": False,
                    "conditional_access_block": False,
                    "mfa_required": False,
                },
            )
            return dict(tenant)

    def ensure_consumer_tenant(self) -> None:
        """The tenant of personal Microsoft accounts (hotmail.example, outlook.example)."""
        with self.store.change() as data:
            data["tenants"].setdefault(
                MSA_TENANT_ID,
                {
                    "id": MSA_TENANT_ID,
                    "name": "Microsoft Accounts",
                    "domains": ["hotmail.example", "outlook.example"],
                    "smtp_auth_disabled": False,
                    "conditional_access_block": False,
                    "mfa_required": False,
                    "consumer": True,
                },
            )

    def update_tenant(self, params: dict[str, Any]) -> dict[str, Any]:
        """Switches: smtp_auth_disabled, conditional_access_block (AADSTS53003), mfa_required (AADSTS50076)."""
        tenant_id = self.tenant_key(require(params, "tenant"))
        with self.store.change() as data:
            tenant = data["tenants"][tenant_id]
            for key in ("smtp_auth_disabled", "conditional_access_block", "mfa_required"):
                if key in params:
                    tenant[key] = as_bool(key, params[key])
            return dict(tenant)

    # -- users -------------------------------------------------------------------------------

    def create_user(self, params: dict[str, Any]) -> dict[str, Any]:
        address = lower(str(require(params, "email")))
        if "@" not in address:
            raise ControlError("email", f"{address!r} is not an email address")
        kind = str(params.get("kind") or "member")
        if kind not in ("member", "shared", "consumer"):
            raise ControlError("kind", "must be member, shared or consumer")
        if kind == "consumer":
            tenant_id = MSA_TENANT_ID
        else:
            tenant_id = self.tenant_key(params.get("tenant") or address.split("@", 1)[1])
        password = str(params.get("password") or new_password()) if kind != "shared" else ""
        with self.store.change() as data:
            if address in data["users"]:
                raise ControlError("email", f"{address} exists already")
            user: dict[str, Any] = {
                "oid": str(uuid.uuid4()),
                "upn": address,
                "password": password,
                "display_name": str(params.get("display_name") or address.split("@")[0].title()),
                "tenant_id": tenant_id,
                "kind": kind,
                "smtp_auth_disabled": None,
                "send_as_trustees": [],
                "limits": None,
                "tokens_valid_after": 0,
            }
            data["users"][address] = user
            return dict(user)

    def update_user(self, params: dict[str, Any]) -> dict[str, Any]:
        """Set `password` (an admin reset revokes refresh tokens) or `smtp_auth_disabled` (true/false/null)."""
        with self.store.change():
            user = self.user_ref(params)
            if "smtp_auth_disabled" in params:
                value = params["smtp_auth_disabled"]
                user["smtp_auth_disabled"] = (
                    None if value in (None, "null", "") else as_bool("smtp_auth_disabled", value)
                )
            if params.get("password"):
                user["password"] = str(params["password"])
                # "Admin resets password in Microsoft Entra admin center: Revoked" for every client.
                # Reference: https://learn.microsoft.com/en-us/entra/identity-platform/refresh-tokens
                user["tokens_valid_after"] = self.store.now()
            return dict(user)

    def revoke_user_grants(self, address: str) -> int | None:
        """Invalidate the user's refresh tokens (AADSTS50173 afterwards); how many, None: no such user."""
        with self.store.change() as data:
            user = data["users"].get(lower(address))
            if user is None:
                return None
            user["tokens_valid_after"] = self.store.now()
            return sum(1 for rt in data["refresh_tokens"].values() if rt["oid"] == user["oid"])

    def grant_send_as(self, params: dict[str, Any]) -> dict[str, Any]:
        """Let `trustee` send as `mailbox` (Add-RecipientPermission -AccessRights SendAs)."""
        trustee = lower(str(require(params, "trustee")))
        with self.store.change():
            mailbox = self.user_ref(params, "mailbox")
            if trustee not in mailbox["send_as_trustees"]:
                mailbox["send_as_trustees"].append(trustee)
            return dict(mailbox)

    def set_limits(self, params: dict[str, Any]) -> dict[str, Any]:
        """Per-mailbox submission limits: per_minute, recipients_per_day, connections; lift=true removes them."""
        with self.store.change():
            user = self.user_ref(params)
            if as_bool("lift", params.get("lift", False)):
                big = 10**9
                user["limits"] = {"per_minute": big, "recipients_per_day": big, "connections": big}
            elif as_bool("reset", params.get("reset", False)):
                user["limits"] = None
            else:
                base = user["limits"] or SubmissionLimits().__dict__
                limits = dict(base)
                for key in ("per_minute", "recipients_per_day", "connections"):
                    if key in params:
                        limits[key] = int(as_number(key, params[key], minimum=1))
                user["limits"] = limits
            return dict(user)

    # -- what the mail side asks -------------------------------------------------------------

    def smtp_auth_disabled(self, address: str) -> str | None:
        """Per-mailbox setting wins over the tenant's; None when SMTP AUTH is allowed."""
        with self.store.lock:
            user = self.store.data["users"].get(lower(address))
            if user is None:
                return None
            if user["smtp_auth_disabled"] is not None:
                return "Mailbox" if user["smtp_auth_disabled"] else None
            tenant = self.store.data["tenants"].get(user["tenant_id"], {})
            return "Tenant" if tenant.get("smtp_auth_disabled") else None

    def may_send_as(self, authenticated: str, from_address: str) -> bool:
        if lower(authenticated) == lower(from_address):
            return True
        with self.store.lock:
            mailbox = self.store.data["users"].get(lower(from_address))
            return bool(mailbox and lower(authenticated) in mailbox["send_as_trustees"])

    def submission_limits(self, address: str) -> SubmissionLimits:
        with self.store.lock:
            user = self.store.data["users"].get(lower(address))
            if user and user["limits"]:
                return SubmissionLimits(**user["limits"])
        return SubmissionLimits()


class AppRegistrations:
    """App registrations: audience, redirect URIs, secrets, permissions, assignment and admin consent."""

    def __init__(self, store: StateStore, directory: EntraDirectory) -> None:
        self.store = store
        self.directory = directory

    def app(self, client_id: str) -> dict[str, Any] | None:
        with self.store.lock:
            app = self.store.data["apps"].get(client_id.strip().lower())
            return copy.deepcopy(app) if app else None

    def _app_ref(self, params: dict[str, Any]) -> dict[str, Any]:
        client_id = str(require(params, "client_id")).lower()
        app = self.store.data["apps"].get(client_id)
        if app is None:
            raise ControlError("client_id", f"no app registration with client ID {client_id}")
        return app

    def create_app(self, params: dict[str, Any]) -> dict[str, Any]:
        name = str(require(params, "name"))
        tenant_id = self.directory.tenant_key(require(params, "tenant"))
        audience = str(params.get("audience") or "AzureADMyOrg")
        if audience not in AUDIENCES:
            raise ControlError("audience", f"must be one of {', '.join(AUDIENCES)}")
        permissions = as_list("permissions", params.get("permissions")) or list(
            DELEGATED_PERMISSIONS
        )
        app_permissions = as_list("app_permissions", params.get("app_permissions"))
        for perm in app_permissions:
            if perm not in APPLICATION_PERMISSIONS:
                raise ControlError(
                    "app_permissions", f"{perm} is not one of {', '.join(APPLICATION_PERMISSIONS)}"
                )
        client_id = str(params.get("client_id") or uuid.uuid4()).lower()
        redirect_uris = as_list("redirect_uris", params.get("redirect_uris"))
        for uri in redirect_uris:
            check_redirect_uri(uri)
        with self.store.change() as data:
            if client_id in data["apps"]:
                raise ControlError("client_id", f"an app with client ID {client_id} exists already")
            app = {
                "client_id": client_id,
                "name": name,
                "tenant_id": tenant_id,
                "audience": audience,
                "redirect_uris": redirect_uris,
                "public_client": as_bool("public_client", params.get("public_client", False)),
                "secrets": [],
                "permissions": permissions,
                "app_permissions": app_permissions,
                "assignment_required": as_bool(
                    "assignment_required", params.get("assignment_required", False)
                ),
                "assigned_users": [],
                "admin_consent_tenants": [],
                "created_at": self.store.now(),
            }
            data["apps"][client_id] = app
            result = copy.deepcopy(app)
        if params.get("secret", True) not in (False, "false", "no", "0"):
            secret = self.add_secret(
                {
                    "client_id": client_id,
                    "value": params.get("secret_value"),
                    "expires_in_days": params.get("secret_expires_in_days", 180),
                }
            )
            result["secret"] = secret
        if params.get("admin_consent"):
            self.set_admin_consent({"client_id": client_id, "granted": params["admin_consent"]})
        return result

    def update_app(self, params: dict[str, Any]) -> dict[str, Any]:
        """Change audience, permissions, app_permissions, public_client, assignment_required."""
        with self.store.change():
            app = self._app_ref(params)
            if "audience" in params:
                if params["audience"] not in AUDIENCES:
                    raise ControlError("audience", f"must be one of {', '.join(AUDIENCES)}")
                app["audience"] = params["audience"]
            if "permissions" in params:
                app["permissions"] = as_list("permissions", params["permissions"])
            if "app_permissions" in params:
                app["app_permissions"] = as_list("app_permissions", params["app_permissions"])
            for key in ("public_client", "assignment_required"):
                if key in params:
                    app[key] = as_bool(key, params[key])
            if "redirect_uris" in params:
                uris = as_list("redirect_uris", params["redirect_uris"])
                for uri in uris:
                    check_redirect_uri(uri)
                app["redirect_uris"] = uris
            return public_app(app)

    def add_redirect_uri(self, params: dict[str, Any]) -> dict[str, Any]:
        uri = str(require(params, "uri"))
        check_redirect_uri(uri)
        with self.store.change():
            app = self._app_ref(params)
            if uri not in app["redirect_uris"]:
                app["redirect_uris"].append(uri)
            return public_app(app)

    def add_secret(self, params: dict[str, Any]) -> dict[str, Any]:
        """A new client secret; the value is returned (like the portal, which shows it once)."""
        days = as_number("expires_in_days", params.get("expires_in_days", 180), minimum=-3650)
        value = str(params.get("value") or new_secret_value())
        with self.store.change():
            app = self._app_ref(params)
            now = self.store.now()
            secret = {
                "id": str(uuid.uuid4()),
                "value": value,
                "hint": value[:3],
                "display_name": str(params.get("display_name") or "sandbox"),
                "created_at": now,
                "expires_at": now + days * 86400,
            }
            if as_bool("replace", params.get("replace", False)):
                app["secrets"] = []
            app["secrets"].append(secret)
            return dict(secret)

    def rotate_secret(self, params: dict[str, Any]) -> dict[str, Any]:
        """Replace every secret of the app by a new one."""
        return self.add_secret({**params, "replace": True})

    def expire_secret(self, params: dict[str, Any]) -> dict[str, Any]:
        """Make a secret (`secret_id`, default: all of the app's) expire now."""
        with self.store.change():
            app = self._app_ref(params)
            wanted = params.get("secret_id")
            found = [s for s in app["secrets"] if wanted in (None, s["id"])]
            if not found:
                raise ControlError("secret_id", f"the app has no secret {wanted}")
            for secret in found:
                secret["expires_at"] = self.store.now() - 1
            return {"expired": [s["id"] for s in found]}

    def assign_user(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.store.change():
            app = self._app_ref(params)
            user = self.directory.user_ref(params)
            if user["oid"] not in app["assigned_users"]:
                app["assigned_users"].append(user["oid"])
            return public_app(app)

    def set_admin_consent(self, params: dict[str, Any]) -> dict[str, Any]:
        """Grant (or withdraw) tenant-wide admin consent for the app's configured permissions."""
        granted = as_bool("granted", params.get("granted", True))
        with self.store.change():
            app = self._app_ref(params)
            tenant_id = (
                self.directory.tenant_key(params["tenant"])
                if params.get("tenant")
                else app["tenant_id"]
            )
            tenants = set(app["admin_consent_tenants"])
            if granted:
                tenants.add(tenant_id)
            else:
                tenants.discard(tenant_id)
            app["admin_consent_tenants"] = sorted(tenants)
            return public_app(app)

    def snapshot(self) -> dict[str, Any]:
        """Every app registration, without secret values."""
        with self.store.lock:
            return {k: public_app(v) for k, v in self.store.data["apps"].items()}
