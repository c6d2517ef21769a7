"""The `scope` parameter: resources the sandbox knows, their permissions, and what a user consented to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailgate.sandbox.entra import EntraDirectory
from mailgate.sandbox.microsoft.errors import AADError

OIDC_SCOPES = ("openid", "profile", "email", "offline_access")

# Resource identifiers (application ID URIs and app IDs) the sandbox knows, with the audience of
# the access tokens it issues for them.
# Reference: https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
RESOURCES = {
    "https://outlook.office.com": ("outlook", "https://outlook.office.com"),
    "https://outlook.office365.com": ("outlook", "https://outlook.office365.com"),
    "00000002-0000-0ff1-ce00-000000000000": ("outlook", "https://outlook.office.com"),
    "https://graph.microsoft.com": ("graph", "https://graph.microsoft.com"),
    "00000003-0000-0000-c000-000000000000": ("graph", "https://graph.microsoft.com"),
}
PERMISSIONS = {
    "outlook": (
        "SMTP.Send",
        "IMAP.AccessAsUser.All",
        "POP.AccessAsUser.All",
        "EWS.AccessAsUser.All",
    ),
    "graph": ("User.Read", "Mail.Send", "Mail.Read", "Mail.ReadWrite"),
}
APP_ROLES = {
    "outlook": ("SMTP.SendAsApp", "IMAP.AccessAsApp", "POP.AccessAsApp"),
    "graph": ("Mail.Send",),
}
RESOURCE_URL = {"outlook": "https://outlook.office.com", "graph": "https://graph.microsoft.com"}


@dataclass
class Scopes:
    """A parsed `scope` parameter: OIDC scopes, and per resource its audience and permissions."""

    oidc: list[str] = field(default_factory=list)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def first_resource(self) -> str | None:
        return next(iter(self.resources), None)


def parse_scopes(raw: str, app: dict[str, Any], tenant_label: str) -> Scopes:
    """Split a scope string; unknown resource → AADSTS500011, unknown permission → AADSTS70011."""
    result = Scopes()
    for item in raw.split():
        if item.lower() in OIDC_SCOPES:
            if item.lower() not in result.oidc:
                result.oidc.append(item.lower())
            continue
        if "://" in item or (item.count("-") == 4 and "/" in item):
            resource_url, _, perm = item.rpartition("/")
        else:
            # "if the resource identifier is omitted in the scope parameter, the resource is assumed
            # to be Microsoft Graph". Reference: https://learn.microsoft.com/en-us/entra/identity-platform/scopes-oidc
            resource_url, perm = "https://graph.microsoft.com", item
        known = RESOURCES.get(resource_url.rstrip("/").lower()) or RESOURCES.get(
            resource_url.rstrip("/")
        )
        if known is None:
            raise AADError(500011, "invalid_resource", resource=resource_url, tenant=tenant_label)
        key, audience = known
        entry = result.resources.setdefault(key, {"aud": audience, "perms": [], "default": False})
        if perm == ".default":
            entry["default"] = True
            configured = [p for p in app["permissions"] if p in PERMISSIONS[key]]
            entry["perms"].extend(p for p in configured if p not in entry["perms"])
            continue
        canonical = next((p for p in PERMISSIONS[key] if p.lower() == perm.lower()), None)
        if canonical is None:
            raise AADError(70011, "invalid_scope", scope=item)
        if canonical not in entry["perms"]:
            entry["perms"].append(canonical)
    return result


def requested_keys(scopes: Scopes) -> set[str]:
    """Consent keys of a request: OIDC scopes, and `resource:Permission` for the rest."""
    keys = set(scopes.oidc)
    for key, entry in scopes.resources.items():
        keys.update(f"{key}:{perm}" for perm in entry["perms"])
    return keys


def consented(directory: EntraDirectory, app: dict[str, Any], user: dict[str, Any]) -> set[str]:
    """Scope keys the user (or an admin for the user's tenant) consented to for this app."""
    keys = directory.consents(user["oid"], app["client_id"])
    if user["tenant_id"] in app["admin_consent_tenants"]:
        for perm in app["permissions"]:
            if perm in OIDC_SCOPES:
                keys.add(perm)
            for key, perms in PERMISSIONS.items():
                if perm in perms:
                    keys.add(f"{key}:{perm}")
    return keys
