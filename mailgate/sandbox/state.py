"""The sandbox's directory: tenants, app registrations, users, grants, toggles, faults and its clock.

Everything lives in memory behind one lock and is written to `<state>/state.json` (atomically) after
each change. Refresh tokens, authorization codes and Google access tokens are stored only as SHA-256
digests; app secrets and user passwords are stored as values (file mode 0600) because the sandbox
prints them for the demo.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import secrets
import string
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mailgate.sandbox.interfaces import SubmissionLimits
from mailgate.sandbox.tokens import InvalidToken, SigningKey

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
CODE_LIFETIME = 600
REFRESH_TOKEN_MAX_INACTIVE = 90 * 86400
GOOGLE_TESTING_REFRESH_LIFETIME = 7 * 86400
GOOGLE_REFRESH_MAX_INACTIVE = 183 * 86400
GOOGLE_ACCESS_TOKEN_LIFETIME = 3599
FAULT_DEFAULTS: dict[str, Any] = {
    "delay": 0.0,
    "fail": None,
    "timeout": False,
    "timeout_seconds": 30.0,
    "flap": False,
    "remaining": None,
}


class ControlError(ValueError):
    """Bad input to a control operation; `field` names the parameter at fault."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def digest(token: str) -> str:
    """The key under which a bearer secret (code, refresh or access token) is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def random_token(prefix: str, length: int = 64) -> str:
    return prefix + secrets.token_urlsafe(length)[:length]


def new_secret_value() -> str:
    # Entra secret values look like "abc8Q~<34 characters>"; the "~" is part of the shape.
    alphabet = string.ascii_letters + string.digits + "-_.~"
    head = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(3))
    return head + "8Q~" + "".join(secrets.choice(alphabet) for _ in range(34))


def new_password() -> str:
    words = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(10))
    return f"Sbx-{words}-1"


def _lower(address: str) -> str:
    return address.strip().lower()


def _require(params: dict[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise ControlError(name, f"is required (add `{name}` to the request)")
    return value


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "yes",
        "1",
        "on",
        "false",
        "no",
        "0",
        "off",
    ):
        return value.lower() in ("true", "yes", "1", "on")
    raise ControlError(name, f"must be true or false, not {value!r}")


def _as_number(name: str, value: Any, *, minimum: float = 0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ControlError(name, f"must be a number, not {value!r}") from None
    if number < minimum:
        raise ControlError(name, f"must be at least {minimum:g}, not {number:g}")
    return number


def _as_list(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in value.replace(",", " ").split() if part]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ControlError(name, "must be a list of strings (or one space/comma-separated string)")


class Clock:
    """Sandbox time: real time, shifted by `advance()` and sped up or slowed by `scale`."""

    def __init__(self, offset: float = 0.0, scale: float = 1.0) -> None:
        self._anchor_real = time.time()
        self._anchor = self._anchor_real + offset
        self.scale = scale

    def now(self) -> float:
        return self._anchor + (time.time() - self._anchor_real) * self.scale

    def advance(self, seconds: float) -> None:
        current = self.now()
        self._anchor_real = time.time()
        self._anchor = current + seconds

    def set_scale(self, scale: float) -> None:
        current = self.now()
        self._anchor_real = time.time()
        self._anchor = current
        self.scale = scale

    def as_dict(self) -> dict[str, float]:
        return {"offset": self.now() - time.time(), "scale": self.scale}


def _empty() -> dict[str, Any]:
    return {
        "version": 1,
        "tenants": {},
        "apps": {},
        "users": {},
        "consents": {},
        "codes": {},
        "refresh_tokens": {},
        "google": {
            "projects": {},
            "users": {},
            "consents": {},
            "codes": {},
            "refresh_tokens": {},
            "access_tokens": {},
        },
        "faults": dict(FAULT_DEFAULTS),
        "settings": {"access_token_lifetime": None},
        "clock": {"offset": 0.0, "scale": 1.0},
        "counters": {},
        "demo": {},
    }


class SandboxState:
    """The sandbox directory and its grants; also the identity side's `MailPolicy`."""

    def __init__(self, state_dir: Path, *, config: Path | None = None, demo: bool = True) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # Others may pass through (Dovecot's unprivileged users reach <state>/mail) but not list it;
        # the files that hold secrets are 0600 themselves.
        os.chmod(self.dir, 0o711)  # noqa: S103
        self.path = self.dir / "state.json"
        self.lock = threading.RLock()
        self.signing_key = SigningKey(self.dir)
        # Browser sessions and pending sign-ins are process memory, as cookies of a restarted
        # identity server would be stale anyway.
        self.sessions: dict[str, dict[str, Any]] = {}
        self.interactions: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            for key, value in _empty().items():
                self.data.setdefault(key, value)
            for key, value in FAULT_DEFAULTS.items():
                self.data["faults"].setdefault(key, value)
        else:
            self.data = _empty()
        self.clock = Clock(**self.data["clock"])
        with self.lock:
            if demo and not self.data["demo"]:
                self._create_demo()
            if config is not None:
                self.apply_config(load_config(config))
            self.save()

    # -- persistence -------------------------------------------------------------------------

    def save(self) -> None:
        """Write the state atomically (temp file + rename) with mode 0600."""
        with self.lock:
            self.data["clock"] = self.clock.as_dict()
            text = json.dumps(self.data, indent=1, sort_keys=True)
            tmp = self.path.with_suffix(f".tmp{threading.get_ident()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, self.path)

    @contextmanager
    def change(self) -> Iterator[dict[str, Any]]:
        """Lock, let the caller mutate `data`, then persist."""
        with self.lock:
            yield self.data
            self.save()

    def now(self) -> float:
        """The sandbox clock in epoch seconds."""
        return self.clock.now()

    def count(self, *names: str) -> None:
        with self.lock:
            counters = self.data["counters"]
            for name in names:
                counters[name] = counters.get(name, 0) + 1

    # -- lookups -----------------------------------------------------------------------------

    def tenant(self, key: str) -> dict[str, Any] | None:
        """A tenant by GUID or verified domain (case-insensitive)."""
        key = key.strip().lower()
        with self.lock:
            if key in self.data["tenants"]:
                return dict(self.data["tenants"][key])
            for tenant in self.data["tenants"].values():
                if key in [d.lower() for d in tenant["domains"]]:
                    return dict(tenant)
        return None

    def app(self, client_id: str) -> dict[str, Any] | None:
        with self.lock:
            app = self.data["apps"].get(client_id.strip().lower())
            return copy.deepcopy(app) if app else None

    def user(self, address: str) -> dict[str, Any] | None:
        with self.lock:
            user = self.data["users"].get(_lower(address))
            return copy.deepcopy(user) if user else None

    def user_by_oid(self, oid: str) -> dict[str, Any] | None:
        with self.lock:
            for user in self.data["users"].values():
                if user["oid"] == oid:
                    return copy.deepcopy(user)
        return None

    def _tenant_key(self, value: Any, field: str = "tenant") -> str:
        tenant = self.tenant(str(value))
        if tenant is None:
            raise ControlError(field, f"no tenant {value!r}: use a tenant ID or a verified domain")
        return str(tenant["id"])

    def _app_ref(self, params: dict[str, Any]) -> dict[str, Any]:
        client_id = str(_require(params, "client_id")).lower()
        app = self.data["apps"].get(client_id)
        if app is None:
            raise ControlError("client_id", f"no app registration with client ID {client_id}")
        return app

    def _user_ref(self, params: dict[str, Any], field: str = "user") -> dict[str, Any]:
        address = _lower(str(_require(params, field)))
        user = self.data["users"].get(address)
        if user is None:
            raise ControlError(field, f"no sandbox user {address}")
        return user

    def access_token_lifetime(self) -> int:
        fixed = self.data["settings"].get("access_token_lifetime")
        if fixed:
            return int(fixed)
        # "a random value ranging between 60-90 minutes (75 minutes on average)"
        # Reference: https://learn.microsoft.com/en-us/entra/identity-platform/configurable-token-lifetimes
        return random.randint(3600, 5400)

    # -- control operations (each is exposed as POST /sandbox/control/<name>) ---------------

    def create_tenant(self, params: dict[str, Any]) -> dict[str, Any]:
        name = str(_require(params, "name"))
        domains = [d.lower() for d in _as_list("domains", params.get("domains"))]
        if not domains:
            raise ControlError(
                "domains", "at least one verified domain is required, e.g. contoso.example"
            )
        tenant_id = str(params.get("id") or uuid.uuid4()).lower()
        try:
            uuid.UUID(tenant_id)
        except ValueError:
            raise ControlError("id", f"must be a GUID, not {tenant_id!r}") from None
        with self.change() as data:
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

    def update_tenant(self, params: dict[str, Any]) -> dict[str, Any]:
        """Switches: smtp_auth_disabled, conditional_access_block (AADSTS53003), mfa_required (AADSTS50076)."""
        tenant_id = self._tenant_key(_require(params, "tenant"))
        with self.change() as data:
            tenant = data["tenants"][tenant_id]
            for key in ("smtp_auth_disabled", "conditional_access_block", "mfa_required"):
                if key in params:
                    tenant[key] = _as_bool(key, params[key])
            return dict(tenant)

    def create_app(self, params: dict[str, Any]) -> dict[str, Any]:
        name = str(_require(params, "name"))
        tenant_id = self._tenant_key(_require(params, "tenant"))
        audience = str(params.get("audience") or "AzureADMyOrg")
        if audience not in AUDIENCES:
            raise ControlError("audience", f"must be one of {', '.join(AUDIENCES)}")
        permissions = _as_list("permissions", params.get("permissions")) or list(
            DELEGATED_PERMISSIONS
        )
        app_permissions = _as_list("app_permissions", params.get("app_permissions"))
        for perm in app_permissions:
            if perm not in APPLICATION_PERMISSIONS:
                raise ControlError(
                    "app_permissions", f"{perm} is not one of {', '.join(APPLICATION_PERMISSIONS)}"
                )
        client_id = str(params.get("client_id") or uuid.uuid4()).lower()
        redirect_uris = _as_list("redirect_uris", params.get("redirect_uris"))
        for uri in redirect_uris:
            _check_redirect_uri(uri)
        with self.change() as data:
            if client_id in data["apps"]:
                raise ControlError("client_id", f"an app with client ID {client_id} exists already")
            app = {
                "client_id": client_id,
                "name": name,
                "tenant_id": tenant_id,
                "audience": audience,
                "redirect_uris": redirect_uris,
                "public_client": _as_bool("public_client", params.get("public_client", False)),
                "secrets": [],
                "permissions": permissions,
                "app_permissions": app_permissions,
                "assignment_required": _as_bool(
                    "assignment_required", params.get("assignment_required", False)
                ),
                "assigned_users": [],
                "admin_consent_tenants": [],
                "created_at": self.now(),
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
        with self.change():
            app = self._app_ref(params)
            if "audience" in params:
                if params["audience"] not in AUDIENCES:
                    raise ControlError("audience", f"must be one of {', '.join(AUDIENCES)}")
                app["audience"] = params["audience"]
            if "permissions" in params:
                app["permissions"] = _as_list("permissions", params["permissions"])
            if "app_permissions" in params:
                app["app_permissions"] = _as_list("app_permissions", params["app_permissions"])
            for key in ("public_client", "assignment_required"):
                if key in params:
                    app[key] = _as_bool(key, params[key])
            if "redirect_uris" in params:
                uris = _as_list("redirect_uris", params["redirect_uris"])
                for uri in uris:
                    _check_redirect_uri(uri)
                app["redirect_uris"] = uris
            return _public_app(app)

    def add_redirect_uri(self, params: dict[str, Any]) -> dict[str, Any]:
        uri = str(_require(params, "uri"))
        _check_redirect_uri(uri)
        with self.change():
            app = self._app_ref(params)
            if uri not in app["redirect_uris"]:
                app["redirect_uris"].append(uri)
            return _public_app(app)

    def add_secret(self, params: dict[str, Any]) -> dict[str, Any]:
        """A new client secret; the value is returned (like the portal, which shows it once)."""
        days = _as_number("expires_in_days", params.get("expires_in_days", 180), minimum=-3650)
        value = str(params.get("value") or new_secret_value())
        with self.change():
            app = self._app_ref(params)
            secret = {
                "id": str(uuid.uuid4()),
                "value": value,
                "hint": value[:3],
                "display_name": str(params.get("display_name") or "sandbox"),
                "created_at": self.now(),
                "expires_at": self.now() + days * 86400,
            }
            if _as_bool("replace", params.get("replace", False)):
                app["secrets"] = []
            app["secrets"].append(secret)
            return dict(secret)

    def rotate_secret(self, params: dict[str, Any]) -> dict[str, Any]:
        """Replace every secret of the app by a new one."""
        return self.add_secret({**params, "replace": True})

    def expire_secret(self, params: dict[str, Any]) -> dict[str, Any]:
        """Make a secret (`secret_id`, default: all of the app's) expire now."""
        with self.change():
            app = self._app_ref(params)
            wanted = params.get("secret_id")
            found = [s for s in app["secrets"] if wanted in (None, s["id"])]
            if not found:
                raise ControlError("secret_id", f"the app has no secret {wanted}")
            for secret in found:
                secret["expires_at"] = self.now() - 1
            return {"expired": [s["id"] for s in found]}

    def assign_user(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.change():
            app = self._app_ref(params)
            user = self._user_ref(params)
            if user["oid"] not in app["assigned_users"]:
                app["assigned_users"].append(user["oid"])
            return _public_app(app)

    def set_admin_consent(self, params: dict[str, Any]) -> dict[str, Any]:
        """Grant (or withdraw) tenant-wide admin consent for the app's configured permissions."""
        granted = _as_bool("granted", params.get("granted", True))
        with self.change():
            app = self._app_ref(params)
            tenant_id = (
                self._tenant_key(params["tenant"]) if params.get("tenant") else app["tenant_id"]
            )
            tenants = set(app["admin_consent_tenants"])
            if granted:
                tenants.add(tenant_id)
            else:
                tenants.discard(tenant_id)
            app["admin_consent_tenants"] = sorted(tenants)
            return _public_app(app)

    def create_user(self, params: dict[str, Any]) -> dict[str, Any]:
        address = _lower(str(_require(params, "email")))
        if "@" not in address:
            raise ControlError("email", f"{address!r} is not an email address")
        kind = str(params.get("kind") or "member")
        if kind not in ("member", "shared", "consumer"):
            raise ControlError("kind", "must be member, shared or consumer")
        if kind == "consumer":
            tenant_id = MSA_TENANT_ID
        else:
            tenant_id = self._tenant_key(params.get("tenant") or address.split("@", 1)[1])
        password = str(params.get("password") or new_password()) if kind != "shared" else ""
        with self.change() as data:
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
        with self.change():
            user = self._user_ref(params)
            if "smtp_auth_disabled" in params:
                value = params["smtp_auth_disabled"]
                user["smtp_auth_disabled"] = (
                    None if value in (None, "null", "") else _as_bool("smtp_auth_disabled", value)
                )
            if params.get("password"):
                user["password"] = str(params["password"])
                # "Admin resets password in Microsoft Entra admin center: Revoked" for every client.
                # Reference: https://learn.microsoft.com/en-us/entra/identity-platform/refresh-tokens
                user["tokens_valid_after"] = self.now()
            return dict(user)

    def revoke_grants(self, params: dict[str, Any]) -> dict[str, Any]:
        """Revoke every refresh token of a user (Microsoft: AADSTS50173 afterwards; Google: invalid_grant)."""
        address = _lower(str(_require(params, "user")))
        with self.change() as data:
            revoked = 0
            user = data["users"].get(address)
            if user is not None:
                user["tokens_valid_after"] = self.now()
                revoked += sum(
                    1 for rt in data["refresh_tokens"].values() if rt["oid"] == user["oid"]
                )
            guser = data["google"]["users"].get(address)
            if guser is not None:
                for rt in data["google"]["refresh_tokens"].values():
                    if rt["email"] == address and not rt["revoked"]:
                        rt["revoked"] = True
                        revoked += 1
                for at in data["google"]["access_tokens"].values():
                    if at["email"] == address:
                        at["revoked"] = True
            if user is None and guser is None:
                raise ControlError("user", f"no sandbox user {address}")
            return {"user": address, "revoked": revoked}

    def grant_send_as(self, params: dict[str, Any]) -> dict[str, Any]:
        """Let `trustee` send as `mailbox` (Add-RecipientPermission -AccessRights SendAs)."""
        trustee = _lower(str(_require(params, "trustee")))
        with self.change():
            mailbox = self._user_ref(params, "mailbox")
            if trustee not in mailbox["send_as_trustees"]:
                mailbox["send_as_trustees"].append(trustee)
            return dict(mailbox)

    def set_limits(self, params: dict[str, Any]) -> dict[str, Any]:
        """Per-mailbox submission limits: per_minute, recipients_per_day, connections; lift=true removes them."""
        with self.change():
            user = self._user_ref(params)
            if _as_bool("lift", params.get("lift", False)):
                big = 10**9
                user["limits"] = {"per_minute": big, "recipients_per_day": big, "connections": big}
            elif _as_bool("reset", params.get("reset", False)):
                user["limits"] = None
            else:
                base = user["limits"] or SubmissionLimits().__dict__
                limits = dict(base)
                for key in ("per_minute", "recipients_per_day", "connections"):
                    if key in params:
                        limits[key] = int(_as_number(key, params[key], minimum=1))
                user["limits"] = limits
            return dict(user)

    def set_faults(self, params: dict[str, Any]) -> dict[str, Any]:
        """Token endpoint faults: delay (s), fail (500|503|null), timeout (bool), flap (bool), remaining (n)."""
        with self.change() as data:
            faults = data["faults"]
            if _as_bool("clear", params.get("clear", False)):
                faults.clear()
                faults.update(FAULT_DEFAULTS)
            if "delay" in params:
                faults["delay"] = _as_number("delay", params["delay"])
            if "fail" in params:
                fail = params["fail"]
                if fail in (None, "", "null", 0, "0", False):
                    faults["fail"] = None
                elif str(fail) in ("500", "503"):
                    faults["fail"] = int(fail)
                else:
                    raise ControlError("fail", "must be 500, 503 or null")
            for key in ("timeout", "flap"):
                if key in params:
                    faults[key] = _as_bool(key, params[key])
            if "timeout_seconds" in params:
                faults["timeout_seconds"] = min(
                    _as_number("timeout_seconds", params["timeout_seconds"]), 300.0
                )
            if "remaining" in params:
                value = params["remaining"]
                faults["remaining"] = (
                    None if value in (None, "", "null") else int(_as_number("remaining", value))
                )
            return dict(faults)

    def set_clock(self, params: dict[str, Any]) -> dict[str, Any]:
        """Advance the clock by `advance` seconds and/or run it `scale` times as fast."""
        with self.change():
            if "advance" in params:
                self.clock.advance(_as_number("advance", params["advance"], minimum=-1e10))
            if "scale" in params:
                scale = _as_number("scale", params["scale"])
                if scale <= 0:
                    raise ControlError("scale", "must be greater than 0")
                self.clock.set_scale(scale)
            return self.clock_info({})

    def clock_info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"now": self.now(), "scale": self.clock.scale, "offset": self.now() - time.time()}

    def update_settings(self, params: dict[str, Any]) -> dict[str, Any]:
        """access_token_lifetime: fixed seconds for every access token (null: random 60-90 minutes)."""
        with self.change() as data:
            if "access_token_lifetime" in params:
                value = params["access_token_lifetime"]
                data["settings"]["access_token_lifetime"] = (
                    None
                    if value in (None, "", "null")
                    else int(_as_number("access_token_lifetime", value, minimum=1))
                )
            return dict(data["settings"])

    def counters(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return dict(self.data["counters"])

    def reset_counters(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.change() as data:
            data["counters"] = {}
            return {}

    def create_google_project(self, params: dict[str, Any]) -> dict[str, Any]:
        name = str(_require(params, "name"))
        status = str(params.get("publishing_status") or "testing")
        if status not in ("testing", "production"):
            raise ControlError("publishing_status", "must be testing or production")
        number = "".join(secrets.choice(string.digits) for _ in range(12))
        suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(32))
        client_id = str(params.get("client_id") or f"{number}-{suffix}.apps.googleusercontent.com")
        uris = _as_list("redirect_uris", params.get("redirect_uris"))
        with self.change() as data:
            project = {
                "client_id": client_id,
                "client_secret": str(
                    params.get("client_secret") or "GOCSPX-" + secrets.token_urlsafe(21)[:28]
                ),
                "name": name,
                "redirect_uris": uris,
                "publishing_status": status,
            }
            data["google"]["projects"][client_id] = project
            return dict(project)

    def update_google_project(self, params: dict[str, Any]) -> dict[str, Any]:
        client_id = str(_require(params, "client_id"))
        with self.change() as data:
            project = data["google"]["projects"].get(client_id)
            if project is None:
                raise ControlError("client_id", f"no Google OAuth client {client_id}")
            if "publishing_status" in params:
                if params["publishing_status"] not in ("testing", "production"):
                    raise ControlError("publishing_status", "must be testing or production")
                project["publishing_status"] = params["publishing_status"]
            if "redirect_uri" in params and params["redirect_uri"] not in project["redirect_uris"]:
                project["redirect_uris"].append(str(params["redirect_uri"]))
            if "redirect_uris" in params:
                project["redirect_uris"] = _as_list("redirect_uris", params["redirect_uris"])
            if params.get("client_secret"):
                project["client_secret"] = str(params["client_secret"])
            return dict(project)

    def create_google_user(self, params: dict[str, Any]) -> dict[str, Any]:
        address = _lower(str(_require(params, "email")))
        with self.change() as data:
            if address in data["google"]["users"]:
                raise ControlError("email", f"{address} exists already")
            user = {
                "email": address,
                "password": str(params.get("password") or new_password()),
                "name": str(params.get("name") or address.split("@")[0].title()),
                "sub": "".join(secrets.choice(string.digits) for _ in range(21)),
            }
            data["google"]["users"][address] = user
            return dict(user)

    def snapshot(self, params: dict[str, Any]) -> dict[str, Any]:
        """Tenants, apps, users and Google clients (what the control page and tests read)."""
        with self.lock:
            return {
                "tenants": copy.deepcopy(self.data["tenants"]),
                "apps": {k: _public_app(v) for k, v in self.data["apps"].items()},
                "users": copy.deepcopy(self.data["users"]),
                "google": {
                    "projects": copy.deepcopy(self.data["google"]["projects"]),
                    "users": copy.deepcopy(self.data["google"]["users"]),
                },
                "faults": dict(self.data["faults"]),
                "settings": dict(self.data["settings"]),
                "demo": dict(self.data["demo"]),
                "clock": self.clock_info({}),
            }

    # -- config and demo ---------------------------------------------------------------------

    def apply_config(self, config: dict[str, Any]) -> None:
        """Create what the config lists and does not exist yet (idempotent across restarts)."""
        for tenant in config.get("tenants", []):
            if not any(self.tenant(d) for d in _as_list("domains", tenant.get("domains"))):
                self.create_tenant(tenant)
        for user in config.get("users", []):
            if self.user(str(user.get("email", ""))) is None:
                self.create_user(user)
        for app in config.get("apps", []):
            if not (app.get("client_id") and self.app(str(app["client_id"]))):
                self.create_app(app)
        google = config.get("google", {})
        for project in google.get("projects", []):
            if project.get("client_id") not in self.data["google"]["projects"]:
                self.create_google_project(project)
        for guser in google.get("users", []):
            if _lower(str(guser.get("email", ""))) not in self.data["google"]["users"]:
                self.create_google_user(guser)
        for key, value in config.get("settings", {}).items():
            self.update_settings({key: value})

    def _create_demo(self) -> None:
        tenant = self.create_tenant({"name": "Contoso", "domains": ["contoso.example"]})
        self.data["tenants"].setdefault(
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
        user = self.create_user({"email": "alex@contoso.example", "display_name": "Alex Wilber"})
        self.create_user({"email": "megan@contoso.example", "display_name": "Megan Bowen"})
        self.create_user(
            {"email": "info@contoso.example", "kind": "shared", "display_name": "Info"}
        )
        consumer = self.create_user(
            {"email": "jordan@hotmail.example", "kind": "consumer", "display_name": "Jordan"}
        )
        app = self.create_app(
            {
                "name": "mailgate demo",
                "tenant": tenant["id"],
                "audience": "AzureADandPersonalMicrosoftAccount",
                "redirect_uris": ["http://127.0.0.1:8000/oauth/microsoft/callback"],
                "app_permissions": list(APPLICATION_PERMISSIONS),
            }
        )
        project = self.create_google_project(
            {
                "name": "mailgate demo",
                "redirect_uris": ["http://127.0.0.1:8000/oauth/google/callback"],
            }
        )
        guser = self.create_google_user({"email": "chris@gmail.example", "name": "Chris"})
        self.data["demo"] = {
            "tenant_id": tenant["id"],
            "tenant_domain": "contoso.example",
            "client_id": app["client_id"],
            "client_secret": app["secret"]["value"],
            "client_secret_id": app["secret"]["id"],
            "client_secret_expires_at": app["secret"]["expires_at"],
            "user": user["upn"],
            "password": user["password"],
            "consumer_user": consumer["upn"],
            "consumer_password": consumer["password"],
            "google_client_id": project["client_id"],
            "google_client_secret": project["client_secret"],
            "google_user": guser["email"],
            "google_password": guser["password"],
        }

    # -- MailPolicy --------------------------------------------------------------------------

    def verify_access_token(self, token: str) -> dict[str, Any]:
        """Claims of a live sandbox access token: a signed Outlook JWT, or an opaque Google token."""
        if token.startswith("ya29."):
            with self.lock:
                record = self.data["google"]["access_tokens"].get(digest(token))
                record = dict(record) if record else None
            if record is None or record["revoked"]:
                raise InvalidToken("not a live Google access token of this sandbox")
            if record["exp"] <= self.now():
                raise InvalidToken("the token has expired")
            return {
                "aud": "https://mail.google.com/",
                "scp": record["scope"],
                "email": record["email"],
                "azp": record["client_id"],
                "exp": int(record["exp"]),
            }
        return self.signing_key.verify_access_token(token, now=self.now())

    def mailbox_exists(self, address: str) -> bool:
        with self.lock:
            return (
                _lower(address) in self.data["users"]
                or _lower(address) in self.data["google"]["users"]
            )

    def smtp_auth_disabled(self, address: str) -> str | None:
        """Per-mailbox setting wins over the tenant's; None when SMTP AUTH is allowed."""
        with self.lock:
            user = self.data["users"].get(_lower(address))
            if user is None:
                return None
            if user["smtp_auth_disabled"] is not None:
                return "Mailbox" if user["smtp_auth_disabled"] else None
            tenant = self.data["tenants"].get(user["tenant_id"], {})
            return "Tenant" if tenant.get("smtp_auth_disabled") else None

    def may_send_as(self, authenticated: str, from_address: str) -> bool:
        if _lower(authenticated) == _lower(from_address):
            return True
        with self.lock:
            mailbox = self.data["users"].get(_lower(from_address))
            return bool(mailbox and _lower(authenticated) in mailbox["send_as_trustees"])

    def submission_limits(self, address: str) -> SubmissionLimits:
        with self.lock:
            user = self.data["users"].get(_lower(address))
            if user and user["limits"]:
                return SubmissionLimits(**user["limits"])
        return SubmissionLimits()

    def token_service(self, claims: dict[str, Any]) -> str:
        """The mailbox a token acts for (lower-cased upn / preferred_username / email)."""
        for key in ("upn", "preferred_username", "email", "unique_name"):
            value = claims.get(key)
            if isinstance(value, str) and value:
                return value.lower()
        return ""

    def introspect(self, token: str, service: str) -> dict[str, Any]:
        """RFC 7662 answer for Dovecot: active only for a live token with the protocol's scope."""
        self.count(f"introspect_{service}")
        try:
            claims = self.verify_access_token(token)
        except InvalidToken:
            return {"active": False}
        scopes = str(claims.get("scp", "")).split()
        if claims.get("aud") == "https://mail.google.com/":
            needed = "https://mail.google.com/"
        else:
            # "smtp" serves an independent SMTP submission server (Postfix + Dovecot SASL in the tests).
            needed = {
                "imap": "IMAP.AccessAsUser.All",
                "pop3": "POP.AccessAsUser.All",
                "smtp": "SMTP.Send",
            }[service]
        username = self.token_service(claims)
        if needed not in scopes or not username or not self.mailbox_exists(username):
            return {"active": False}
        return {
            "active": True,
            "username": username,
            "email": username,
            "sub": str(claims.get("sub") or claims.get("oid") or username),
            "scope": " ".join(scopes),
            "exp": int(claims["exp"]),
            "client_id": str(claims.get("appid") or claims.get("azp") or ""),
            "token_type": "Bearer",
        }


def _public_app(app: dict[str, Any]) -> dict[str, Any]:
    """An app registration without secret values (the portal shows only a hint)."""
    result = copy.deepcopy(app)
    result["secrets"] = [
        {k: v for k, v in secret.items() if k != "value"} for secret in app["secrets"]
    ]
    return result


def _check_redirect_uri(uri: str) -> None:
    # "Redirect URIs must begin with the scheme https" except for localhost; max 256 characters.
    # Reference: https://learn.microsoft.com/en-us/entra/identity-platform/reply-url
    from urllib.parse import urlsplit

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


def load_config(path: Path) -> dict[str, Any]:
    """A JSON or TOML (by suffix) file with tenants, users, apps, google.projects/users, settings."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ControlError("--config", f"cannot read {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(text)
        loaded = json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ControlError(
            "--config", f"{path} is not valid {path.suffix[1:].upper()}: {exc}"
        ) from None
    if not isinstance(loaded, dict):
        raise ControlError("--config", f"{path} must hold an object with tenants, users, apps, ...")
    return loaded
