"""The Mail Server form of the console; its rules live in mailgate.servers.validation."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError
from django.http import HttpRequest

from mailgate import providers
from mailgate.conf import is_loopback_host
from mailgate.servers.models import AUTH_METHODS, CLOUD_CHOICES, MailServer, default_limits
from mailgate.servers.validation import (
    LIMIT_FIELDS,
    METHOD_FIELDS,
    SECRET_FIELDS,
    validate_server,
)

FORM_FIELDS = [
    "name",
    "auth_method",
    "username",
    "client_id",
    "client_secret_expires_on",
    "tenant",
    "cloud",
    "certificate",
    "smtp_host",
    "smtp_port",
    "smtp_security",
    "from_filter",
    "send_as",
    "priority",
    "active",
    "incoming_protocol",
    "incoming_host",
    "incoming_port",
    "incoming_security",
    "incoming_folders",
    "poll_interval",
    "fetch_existing",
    "idle",
    "after_fetch",
    "move_to_folder",
    "webhook_url",
    *LIMIT_FIELDS,
]

TENANT_HELP = (
    "common, organizations, consumers, a tenant ID (GUID) or a verified domain such as contoso.com. "
    "Leave empty to use the Username's domain."
)
STORED_NOTES = {
    "password": "A password is stored. Leave empty to keep it, or type a new one to replace it.",
    "client_secret": (
        "A client secret is stored. Leave empty to keep it, or type a new one to replace it."
    ),
    "private_key": "A private key is stored. Leave empty to keep it, or paste a new one to replace it.",
    "webhook_secret": "A signing secret is stored. Leave empty to keep it, or type a new one.",
}


class SecretTextarea(forms.Textarea):
    """A textarea that never writes its value back into the page (PasswordInput's
    render_value=False for multi-line secrets such as a private key)."""

    def format_value(self, value: Any) -> str | None:
        return None


class MailServerForm(forms.ModelForm):
    """Create or edit a MailServer; secrets are write-only and kept when left empty."""

    password = forms.CharField(
        label="Password",
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    client_secret = forms.CharField(
        label="Client Secret",
        required=False,
        strip=True,
        help_text="The secret's Value (not its Secret ID).",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )
    webhook_secret = forms.CharField(
        label="Webhook Signing Secret",
        required=False,
        strip=True,
        help_text="Signs each webhook POST (X-Mailgate-Signature: sha256=HMAC of the body).",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )
    private_key = forms.CharField(
        label="Private Key (PEM)",
        required=False,
        strip=True,
        widget=SecretTextarea(attrs={"rows": 4, "autocomplete": "off", "spellcheck": "false"}),
    )

    class Meta:
        model = MailServer
        fields = FORM_FIELDS
        widgets = {
            "auth_method": forms.Select(),
            "client_secret_expires_on": forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
            "certificate": forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
            "from_filter": forms.TextInput(),
            "send_as": forms.TextInput(),
            "incoming_folders": forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
            "webhook_url": forms.URLInput(),
        }
        help_texts = {
            "tenant": TENANT_HELP,
            "from_filter": (
                "Addresses or domains this server may send as, separated by commas "
                "(empty: any sender)."
            ),
            "send_as": "Further addresses the mailbox may send as (shared mailboxes, aliases).",
            "priority": "Lower numbers are tried first.",
            "client_secret_expires_on": "mailgate warns before the secret expires.",
            "incoming_folders": "IMAP folders to fetch from, one a line (INBOX by default).",
            "webhook_url": "mailgate POSTs each new message's JSON here (empty: no webhook).",
        }

    def __init__(
        self, *args: Any, read_only: bool = False, require_secrets: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.require_secrets = require_secrets
        self.label_suffix = ""
        self.use_required_attribute = False
        self.warnings: list[str] = []
        self.fields["certificate"].label = "Certificate (PEM)"
        # Empty means "the default of the chosen method", filled in by validation.
        for name in ("smtp_port", "incoming_folders", "poll_interval", *LIMIT_FIELDS):
            self.fields[name].required = False
        for name in ("smtp_port", "incoming_port", "priority", "poll_interval", *LIMIT_FIELDS):
            # Range checks live in validation, with messages that name the fix.
            self.fields[name].validators = []
            self.fields[name].widget.attrs.pop("min", None)
            self.fields[name].widget.attrs.pop("max", None)
        if not self.is_bound and self.instance.pk is None:
            limits = default_limits(self.initial.get("auth_method") or "password")
            for name, attr in LIMIT_FIELDS.items():
                self.initial.setdefault(name, getattr(limits, attr))
        if read_only:
            for f in self.fields.values():
                f.disabled = True

    @property
    def is_new(self) -> bool:
        return self.instance.pk is None

    def stored_notes(self) -> dict[str, str]:
        """Notes for secrets already stored on this server (never any part of the value)."""
        if self.is_new:
            return {}
        return {
            name: note for name, note in STORED_NOTES.items() if getattr(self.instance, name, None)
        }

    def retyped_secrets(self) -> list[str]:
        """Secrets typed into a form that failed validation: they are not sent back to the browser."""
        if not self.is_bound or not self.errors:
            return []
        return [
            str(self.fields[name].label or name)
            for name in SECRET_FIELDS
            if (self.data.get(name) or "").strip()
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        verdict = validate_server(
            cleaned,
            existing=None if self.is_new else self.instance,
            require_secrets=self.require_secrets,
        )
        for name, messages in verdict.errors.items():
            for message in messages:
                self.add_error(name if name in self.fields else None, message)
        self.warnings = verdict.warnings
        for name, value in verdict.values.items():
            if name in self.fields and name not in self.errors:
                cleaned[name] = value
        return cleaned

    def save(self, commit: bool = True) -> MailServer:
        server: MailServer = super().save(commit=False)
        needed = METHOD_FIELDS.get(server.auth_method, ())
        for name in SECRET_FIELDS:
            if name not in needed:
                # A secret the chosen method does not use is not kept.
                setattr(server, name, None)
            elif value := self.cleaned_data.get(name):
                setattr(server, name, value)
        if value := self.cleaned_data.get("webhook_secret"):
            server.webhook_secret = value
        elif not server.webhook_url:
            server.webhook_secret = None  # type: ignore[assignment]
        if commit:
            server.save()
        return server


def redirect_urls() -> dict[str, str]:
    """OAuth2 Redirect URL per Authenticate Using value (empty for non-OAuth methods)."""
    base = settings.MAILGATE_PUBLIC_URL
    return {
        key: base + providers.get(info.provider).callback_path if info.provider else ""
        for key, info in AUTH_METHODS.items()
    }


def public_url_warning() -> str:
    """A warning when the redirect URLs would be plain http on a non-loopback host."""
    parts = urlsplit(settings.MAILGATE_PUBLIC_URL)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return (
            f"MAILGATE_PUBLIC_URL is {settings.MAILGATE_PUBLIC_URL}: Microsoft and Google accept "
            "plain http redirect URLs only for localhost. Serve mailgate over https and set "
            "MAILGATE_PUBLIC_URL to its https address."
        )
    return ""


# The origin (host:port) the console was last opened under, kept in the shared cache so `doctor`,
# which sees no browser, can tell when it differs from MAILGATE_PUBLIC_URL.
ORIGIN_CACHE_KEY = "mailgate:console-origin"
ORIGIN_SECONDS = 7 * 86400


def _netloc(url: str) -> str:
    parts = urlsplit(url if "//" in url else "//" + url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return host if port is None or port == default else f"{host}:{port}"


def origin_warning(seen: str) -> str:
    """A warning when the console is opened at another host:port than MAILGATE_PUBLIC_URL's
    (when it is set).

    The provider sends the browser back to the OAuth2 Redirect URL, which is built from
    MAILGATE_PUBLIC_URL: the app registration must have that one, not the address in the browser.
    """
    public = settings.MAILGATE_PUBLIC_URL
    # Unset, it is derived from where `run` / `web` listen, which only their process knows.
    if not settings.CONFIG.public_url_explicit or not seen or _netloc(seen) == _netloc(public):
        return ""
    needed = ", ".join(url for url in dict.fromkeys(redirect_urls().values()) if url)
    return (
        f"This console was opened at {seen}, but MAILGATE_PUBLIC_URL is {public}: after sign-in "
        f"Microsoft and Google send the browser back to {needed}, so Azure / Google must have "
        f"exactly that redirect URL registered. Open the console at {public}, or set "
        f"MAILGATE_PUBLIC_URL to {seen} and register {seen}/oauth/… instead."
    )


def note_console_origin(request: HttpRequest) -> str:
    """Remember where the console was opened (for `doctor`); the origin warning for it, or ""."""
    seen = f"{request.scheme}://{request.get_host()}"
    if settings.CONFIG.public_url_explicit:
        with contextlib.suppress(DatabaseError):  # no cache table yet: only doctor misses it
            if cache.get(ORIGIN_CACHE_KEY) != seen:
                cache.set(ORIGIN_CACHE_KEY, seen, ORIGIN_SECONDS)
    return origin_warning(seen)


def last_origin_warning() -> str:
    """The origin warning for the address the console was last opened at ("" when none seen)."""
    if not settings.CONFIG.public_url_explicit:
        return ""
    try:
        seen = cache.get(ORIGIN_CACHE_KEY) or ""
    except DatabaseError:  # the cache table is made with the first `mailgate run`
        return ""
    return origin_warning(seen)


def form_defaults() -> dict[str, Any]:
    """What the form's script needs: fields, redirect URL, host defaults and limits per method."""
    urls = redirect_urls()
    methods: dict[str, Any] = {}
    for key, info in AUTH_METHODS.items():
        clouds: dict[str, Any] = {}
        if info.provider:
            provider = providers.get(info.provider)
            for cloud_key, _ in CLOUD_CHOICES:
                d = provider.clouds.get(cloud_key, provider.defaults)
                clouds[cloud_key] = {
                    "smtp_host": d.smtp_host,
                    "smtp_port": d.smtp_port,
                    "smtp_security": d.smtp_security,
                    "imap_host": d.imap_host,
                    "imap_port": d.imap_port,
                    "pop3_host": d.pop3_host,
                    "pop3_port": d.pop3_port,
                    "incoming_security": d.incoming_security,
                }
        limits = default_limits(key)
        methods[key] = {
            "fields": list(METHOD_FIELDS[key]),
            "redirect_url": urls[key],
            "clouds": clouds,
            "limits": {name: getattr(limits, attr) for name, attr in LIMIT_FIELDS.items()},
        }
    return {"methods": methods}
