"""Tenants and national clouds of the Microsoft identity platform."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings

# Reference: https://learn.microsoft.com/entra/identity-platform/v2-protocols (tenant values)
SPECIAL_TENANTS = ("common", "organizations", "consumers")
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$", re.I
)
# Microsoft account (personal) domains: Outlook.com, Hotmail, Live, MSN. Their users sign in at
# /consumers; a verified-domain tenant endpoint does not exist for them.
# Reference: https://support.microsoft.com/office/pop-imap-and-smtp-settings-8361e398-8af4-4e97-b147-6c6c4ac95353
_CONSUMER_DOMAIN = re.compile(
    r"^(outlook|hotmail|live|windowslive)\.[a-z.]+$|^(msn|passport)\.com$"
)


@dataclass(frozen=True)
class Cloud:
    key: str
    login_host: str  # default authority host; the global one is overridable by a setting
    outlook_resource: str  # the Exchange Online resource that SMTP/IMAP/POP scopes belong to


# Reference: https://learn.microsoft.com/entra/identity-platform/authentication-national-cloud
CLOUDS: dict[str, Cloud] = {
    "global": Cloud("global", "https://login.microsoftonline.com", "https://outlook.office.com"),
    "usgov": Cloud("usgov", "https://login.microsoftonline.us", "https://outlook.office365.us"),
    "china": Cloud("china", "https://login.chinacloudapi.cn", "https://partner.outlook.cn"),
}


def cloud(key: str) -> Cloud:
    return CLOUDS.get(key) or CLOUDS["global"]


def login_url(cloud_key: str) -> str:
    """Authority base URL for a national cloud; MAILGATE_MICROSOFT_LOGIN_URL replaces the global one."""
    if cloud_key in ("", "global"):
        return str(settings.MAILGATE_MICROSOFT_LOGIN_URL).rstrip("/")
    return cloud(cloud_key).login_host


def is_consumer_address(username: str) -> bool:
    domain = username.rpartition("@")[2].strip().lower()
    return bool(domain) and bool(_CONSUMER_DOMAIN.match(domain))


def is_valid_tenant(value: str) -> bool:
    """common / organizations / consumers, a tenant ID (GUID) or a domain name."""
    value = value.strip()
    return value.lower() in SPECIAL_TENANTS or bool(_GUID.match(value) or _DOMAIN.match(value))


def resolve_tenant(tenant: str, username: str) -> str:
    """The tenant path segment: the configured one, else `consumers` for personal addresses, else the
    Username's domain.

    A verified domain is a valid tenant identifier and a tenant endpoint serves single- and
    multi-tenant apps alike, which avoids AADSTS50194 (single-tenant app on /common).
    Reference: https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow#request-an-authorization-code
    """
    tenant = tenant.strip()
    if tenant:
        return tenant.lower() if tenant.lower() in SPECIAL_TENANTS else tenant
    if is_consumer_address(username):
        return "consumers"
    domain = username.rpartition("@")[2].strip().lower()
    return domain or "organizations"
