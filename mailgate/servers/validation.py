"""The one set of rules for a mail server's settings, shared by the console form, the CLI and import."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from django.core.exceptions import ValidationError
from django.core.validators import DomainNameValidator
from django.utils import timezone

from mailgate.addresses import is_address
from mailgate.conf import is_loopback_host
from mailgate.crypto import Sealed
from mailgate.servers.models import (
    AFTER_FETCH_CHOICES,
    AUTH_METHODS,
    DEFAULT_POLL_INTERVAL,
    INCOMING_SECURITY_CHOICES,
    MailServer,
    default_limits,
    mail_defaults,
    split_addresses,
    split_folders,
)

SECRET_FIELDS = ("password", "client_secret", "private_key")

# The fields each Authenticate Using value needs; the console shows only these.
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "password": ("username", "password"),
    "outlook": (
        "username",
        "redirect_url",
        "client_id",
        "client_secret",
        "client_secret_expires_on",
        "tenant",
        "cloud",
    ),
    "gmail": ("username", "redirect_url", "client_id", "client_secret", "client_secret_expires_on"),
    "certificate": ("username", "certificate", "private_key"),
}
LIMIT_FIELDS = {
    "limit_per_minute": "per_minute",
    "limit_recipients_per_day": "recipients_per_day",
    "limit_connections": "connections",
    "max_message_bytes": "max_message_bytes",
}
SECRET_LABELS = {
    "password": "Password",
    "client_secret": "Client Secret",
    "private_key": "Private Key",
}

GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
TENANT_ALIASES = ("common", "organizations", "consumers")
SECRET_EXPIRY_WARNING_DAYS = 30
DEFAULT_SMTP_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
DEFAULT_INCOMING_PORTS = {
    ("imap", True): 993,
    ("imap", False): 143,
    ("pop3", True): 995,
    ("pop3", False): 110,
}
_domain = DomainNameValidator(accept_idna=True)


@dataclass
class Verdict:
    """The outcome of validating one server: values with defaults applied, errors per field, warnings."""

    values: dict[str, Any]
    errors: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)


def is_email(value: str) -> bool:
    """Syntax only, as for the addresses of a message: a UTF-8 local part (RFC 6531) and a domain
    that is not publicly deliverable (corp.local, *.test) are addresses too."""
    return is_address(value)


def is_domain(value: str) -> bool:
    if "." not in value:
        return False
    try:
        _domain(value)
    except ValidationError:
        return False
    return True


def looks_like_secret_value(value: str) -> bool:
    """Microsoft client secret values are ~40 characters with a '~' (since 2021), never a GUID."""
    return not GUID_RE.match(value) and ("~" in value or len(value) >= 30)


def _stored(existing: MailServer | None, name: str) -> bool:
    return existing is not None and bool(getattr(existing, name, None))


def apply_defaults(values: dict[str, Any]) -> None:
    """Fill empty SMTP / incoming / limit fields with the defaults of the chosen method."""
    method = values.get("auth_method") or "password"
    if method not in AUTH_METHODS:
        return
    defaults = mail_defaults(method, values.get("cloud") or "global")
    security = values.get("smtp_security") or "starttls"
    if defaults is not None and not values.get("smtp_host"):
        values["smtp_host"] = defaults.smtp_host
        security = values["smtp_security"] = values.get("smtp_security") or defaults.smtp_security
        if values.get("smtp_port") in (None, ""):
            values["smtp_port"] = defaults.smtp_port
    if values.get("smtp_port") in (None, ""):
        values["smtp_port"] = DEFAULT_SMTP_PORTS.get(security, 587)
    protocol = values.get("incoming_protocol") or "none"
    if protocol in ("imap", "pop3"):
        in_security = values.get("incoming_security") or "ssl"
        values["incoming_security"] = in_security
        if defaults is not None and not values.get("incoming_host"):
            values["incoming_host"] = (
                defaults.imap_host if protocol == "imap" else defaults.pop3_host
            )
        if values.get("incoming_port") in (None, ""):
            values["incoming_port"] = DEFAULT_INCOMING_PORTS[(protocol, in_security == "ssl")]
        if protocol == "imap" and not split_folders(values.get("incoming_folders") or ""):
            values["incoming_folders"] = "INBOX"
    if values.get("poll_interval") in (None, ""):
        values["poll_interval"] = DEFAULT_POLL_INTERVAL
    if not values.get("after_fetch"):
        values["after_fetch"] = "keep"
    limits = default_limits(method)
    for name, attr in LIMIT_FIELDS.items():
        if values.get(name) in (None, ""):
            values[name] = getattr(limits, attr)


def validate_server(
    values: dict[str, Any],
    *,
    existing: MailServer | None = None,
    require_secrets: bool = True,
    today: dt.date | None = None,
) -> Verdict:
    """Check one server's values (model field names + secrets; '' = keep the stored secret).

    `values` hold Python types (ints, dates, bools). Defaults are applied to a copy, returned in the
    verdict. `require_secrets=False` lets import create servers whose secrets are supplied later.
    """
    verdict = Verdict(values=dict(values))
    v = verdict.values
    today = today or timezone.localdate()
    method = v.get("auth_method") or "password"
    if method not in AUTH_METHODS:
        choices = ", ".join(AUTH_METHODS)
        verdict.error("auth_method", f"Choose one of {choices}.")
        return verdict
    apply_defaults(v)
    label = AUTH_METHODS[method].label
    is_oauth = AUTH_METHODS[method].provider is not None
    username = (v.get("username") or "").strip()
    v["username"] = username

    if is_oauth or method == "password":
        if not username:
            verdict.error("username", f"{label} needs the mailbox's sign-in name.")
        elif is_oauth and not is_email(username):
            verdict.error(
                "username",
                f"Enter the mailbox's e-mail address (e.g. sales@example.com); {label} signs in as it.",
            )
        elif "@" in username and not is_email(username):
            verdict.error("username", f"{username!r} is not a valid e-mail address.")

    def need_secret(name: str, why: str) -> None:
        if v.get(name) or _stored(existing, name) or not require_secrets:
            return
        verdict.error(name, f"{label} needs {why}.")

    if method == "password":
        need_secret("password", "the mailbox password")
    if is_oauth:
        _check_oauth(verdict, method, existing, today, need_secret)
    if method == "certificate":
        _check_certificate(verdict, existing, need_secret)

    for name, label_ in (("smtp_port", "SMTP Port"), ("incoming_port", "Incoming Port")):
        port = v.get(name)
        if port is not None and not (isinstance(port, int) and 1 <= port <= 65535):
            verdict.error(name, f"{label_} must be a number from 1 to 65535.")

    protocol = v.get("incoming_protocol") or "none"
    if not v.get("smtp_host") and protocol == "none":
        verdict.error(
            "smtp_host",
            "Enter the SMTP Server, or choose IMAP or POP3 under Incoming Mail for a receive-only mailbox.",
        )
    if protocol != "none":
        if not v.get("incoming_host"):
            verdict.error("incoming_host", f"Enter the {protocol.upper()} server's host name.")
        _check_incoming(verdict, protocol)

    for entry in split_addresses(v.get("from_filter") or ""):
        if not (is_email(entry) or is_domain(entry.lstrip("@"))):
            verdict.error(
                "from_filter",
                f"{entry!r} is neither an e-mail address nor a domain "
                "(use e.g. sales@example.com or example.com, separated by commas).",
            )
    for entry in split_addresses(v.get("send_as") or ""):
        if not is_email(entry):
            verdict.error(
                "send_as", f"{entry!r} is not an e-mail address (separate addresses with commas)."
            )

    method_info = AUTH_METHODS.get(v.get("auth_method") or "")
    for name in LIMIT_FIELDS:
        number = v.get(name)
        if name == "limit_connections" and method_info is not None and method_info.provider:
            # Exchange Online and Gmail refuse a connection over their limit.
            if not isinstance(number, int) or number < 1:
                verdict.error(
                    name,
                    "Enter a whole number of at least 1 (the provider limits the connections "
                    "of a mailbox).",
                )
        elif not isinstance(number, int) or number < 0:
            verdict.error(name, "Enter a whole number: 0 for no limit, or the most allowed.")

    host = v.get("smtp_host") or ""
    info = AUTH_METHODS.get(v.get("auth_method") or "")
    if v.get("smtp_security") == "none" and host and not is_loopback_host(host):
        if info is not None and info.provider:
            # A bearer token in clear is as good as the mailbox's password: the transport refuses
            # to send it, so such a server could never authenticate.
            verdict.error(
                "smtp_security",
                f"Connection Security is None for {host}: an OAuth access token is never sent "
                "unencrypted. Choose TLS (STARTTLS) or SSL/TLS.",
            )
            return verdict
        verdict.warnings.append(
            f"Connection Security is None for {host}: credentials and mail travel unencrypted. "
            "Use STARTTLS or SSL/TLS unless the server is on this machine."
        )
    return verdict


def _check_incoming(verdict: Verdict, protocol: str) -> None:
    """Incoming Security, Folders, Poll Interval, After Fetch and its folder."""
    v = verdict.values
    if v.get("incoming_security") not in dict(INCOMING_SECURITY_CHOICES):
        verdict.error(
            "incoming_security",
            "Incoming Security must be SSL/TLS (ssl) or TLS (STARTTLS) (starttls): "
            "mail is fetched over TLS only.",
        )
    folders = split_folders(v.get("incoming_folders") or "")
    v["incoming_folders"] = "\n".join(folders) or "INBOX"
    for folder in folders:
        if not folder.isprintable() or '"' in folder or len(folder) > 255:
            verdict.error(
                "incoming_folders",
                f"{folder!r} is not a folder name (printable characters without quotes, "
                "one folder a line).",
            )
    interval = v.get("poll_interval")
    if not isinstance(interval, int) or isinstance(interval, bool) or not 1 <= interval <= 86400:
        verdict.error("poll_interval", "Poll Interval must be a number of seconds from 1 to 86400.")
    after = v.get("after_fetch") or "keep"
    if after not in dict(AFTER_FETCH_CHOICES):
        verdict.error("after_fetch", "After Fetch must be keep, mark_read, move or delete.")
    elif protocol == "pop3" and after in ("move", "mark_read"):
        verdict.error(
            "after_fetch",
            "POP3 can only keep or delete fetched messages: choose Keep or Delete, or use IMAP.",
        )
    elif after == "move":
        target = (v.get("move_to_folder") or "").strip()
        v["move_to_folder"] = target
        if not target:
            verdict.error("move_to_folder", "Enter the folder to move fetched messages to.")
        elif target in folders:
            verdict.error(
                "move_to_folder",
                f"{target!r} is one of the Folders fetched from: choose another folder.",
            )
    url = (v.get("webhook_url") or "").strip()
    v["webhook_url"] = url
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            verdict.error("webhook_url", "Webhook URL must be an http:// or https:// address.")
        elif parts.scheme == "http" and not is_loopback_host(parts.hostname):
            verdict.warnings.append(
                f"Webhook URL {url} is plain http: messages travel unencrypted; use https."
            )


def _check_oauth(
    verdict: Verdict,
    method: str,
    existing: MailServer | None,
    today: dt.date,
    need_secret: Callable[[str, str], None],
) -> None:
    v = verdict.values
    client_id = (v.get("client_id") or "").strip()
    v["client_id"] = client_id
    if not client_id:
        where = (
            "the Application (client) ID from the app registration's Overview page"
            if method == "outlook"
            else "the OAuth client ID from Google Cloud console > Credentials"
        )
        verdict.error("client_id", f"Enter {where}.")
    elif method == "outlook" and not GUID_RE.match(client_id):
        if looks_like_secret_value(client_id):
            verdict.error(
                "client_id",
                "This looks like a client secret Value, which belongs in Client Secret. The Client ID "
                "is the Application (client) ID, a GUID shown on the app registration's Overview page.",
            )
        else:
            verdict.error(
                "client_id",
                "The Client ID is the Application (client) ID: a GUID such as "
                "00000000-0000-0000-0000-000000000000 from the app registration's Overview page.",
            )
    need_secret("client_secret", "the client secret's Value")
    secret = v.get("client_secret") or ""
    if secret and client_id and secret.strip() == client_id:
        verdict.error(
            "client_secret",
            "The Client Secret is the same as the Client ID: paste the secret's Value.",
        )
    elif method == "outlook" and secret and GUID_RE.match(secret.strip()):
        verdict.warnings.append(
            "The Client Secret looks like a Secret ID (a GUID). Microsoft expects the secret's Value "
            "(Certificates & secrets > Client secrets > Value column, shown only right after creating "
            "it); a Secret ID fails with AADSTS7000215."
        )
    tenant = (v.get("tenant") or "").strip()
    v["tenant"] = tenant
    if (
        method == "outlook"
        and tenant
        and not (tenant.lower() in TENANT_ALIASES or GUID_RE.match(tenant) or is_domain(tenant))
    ):
        verdict.error(
            "tenant",
            "Enter common, organizations, consumers, a tenant ID (GUID) or a verified domain "
            "such as contoso.com; leave empty to use the Username's domain.",
        )
    expires = v.get("client_secret_expires_on")
    if isinstance(expires, dt.date):
        days = (expires - today).days
        if days < 0:
            verdict.warnings.append(
                f"Client Secret Expires On ({expires.isoformat()}) is in the past: the secret has "
                "expired, so token requests will fail (AADSTS7000222). Create a new client secret "
                "and paste its Value."
            )
        elif days <= SECRET_EXPIRY_WARNING_DAYS:
            verdict.warnings.append(
                f"The client secret expires in {days} day{'s' if days != 1 else ''} "
                f"({expires.isoformat()}): create a new one before then."
            )


def _load_key(pem: str) -> PrivateKeyTypes:
    return serialization.load_pem_private_key(pem.encode(), password=None)


def _check_certificate(
    verdict: Verdict, existing: MailServer | None, need_secret: Callable[[str, str], None]
) -> None:
    v = verdict.values
    cert_pem = (v.get("certificate") or "").strip()
    v["certificate"] = cert_pem
    if not cert_pem:
        verdict.error("certificate", "TLS Certificate needs the client certificate (PEM).")
    need_secret("private_key", "the certificate's private key (PEM)")
    key_pem = v.get("private_key") or ""
    stored_key = getattr(existing, "private_key", None)
    if not key_pem and isinstance(stored_key, Sealed):
        key_pem = stored_key.reveal()
    cert = None
    if cert_pem:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
        except ValueError:
            verdict.error(
                "certificate",
                "This is not a PEM certificate: paste the text from -----BEGIN CERTIFICATE----- "
                "to -----END CERTIFICATE-----.",
            )
    if cert is not None:
        now = timezone.now()
        if cert.not_valid_after_utc < now:
            verdict.error(
                "certificate",
                f"The certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}: issue a new one.",
            )
        elif cert.not_valid_before_utc > now:
            verdict.error(
                "certificate",
                f"The certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC.",
            )
    key = None
    if key_pem:
        try:
            key = _load_key(key_pem)
        except TypeError:
            verdict.error(
                "private_key",
                "The private key is protected by a passphrase: store it unencrypted "
                "(openssl pkey -in key.pem -out plain-key.pem); mailgate encrypts it at rest.",
            )
        except Exception:
            verdict.error(
                "private_key",
                "This is not a PEM private key: paste the text from -----BEGIN PRIVATE KEY----- "
                "to -----END PRIVATE KEY-----.",
            )
    if cert is not None and key is not None:
        spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            verdict.error(
                "private_key", "This private key does not belong to the certificate above."
            )
