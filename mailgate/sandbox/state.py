"""The sandbox's identity side, composed: its store, directory, Google accounts, faults, switches and mail policy.

Everything lives in memory behind one lock and is written to `<state>/state.json` (atomically) after
each change (`store.py`). Refresh tokens, authorization codes and Google access tokens are stored only
as SHA-256 digests; app secrets and user passwords are stored as values (file mode 0600) because the
sandbox prints them for the demo.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailgate.sandbox.entra import AppRegistrations, EntraDirectory
from mailgate.sandbox.faults import FAULT_DEFAULTS, TokenFaults
from mailgate.sandbox.google_accounts import GoogleAccounts
from mailgate.sandbox.interfaces import SubmissionLimits
from mailgate.sandbox.params import ControlError, require
from mailgate.sandbox.policy import SandboxMailPolicy
from mailgate.sandbox.seed import Seeder, load_config
from mailgate.sandbox.store import PendingSignIns, StateStore
from mailgate.sandbox.switches import Switches
from mailgate.sandbox.tokens import SigningKey


def _layout() -> dict[str, Any]:
    """The state document of a new sandbox."""
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
    """The parts of the identity side, built over one store; the endpoints and the control API use them."""

    def __init__(self, state_dir: Path, *, config: Path | None = None, demo: bool = True) -> None:
        self.store = StateStore(state_dir, _layout())
        self.signing_key = SigningKey(self.store.dir)
        self.directory = EntraDirectory(self.store)
        self.apps = AppRegistrations(self.store, self.directory)
        self.google = GoogleAccounts(self.store)
        self.faults = TokenFaults(self.store)
        self.switches = Switches(self.store)
        self.policy = SandboxMailPolicy(self.store, self.directory, self.google, self.signing_key)
        # Browser sessions and pending sign-ins are process memory, as cookies of a restarted
        # identity server would be stale anyway.
        self.sessions: dict[str, dict[str, Any]] = {}
        self.pending = PendingSignIns(self.store.lock)
        seeder = Seeder(self.directory, self.apps, self.google, self.switches)
        with self.store.lock:
            if demo and not self.store.data["demo"]:
                self.store.data["demo"] = seeder.demo()
            if config is not None:
                seeder.apply_config(load_config(config))
            self.store.save()

    @property
    def data(self) -> dict[str, Any]:
        """The state document itself (read it under `store.lock`)."""
        return self.store.data

    def now(self) -> float:
        """The sandbox clock in epoch seconds."""
        return self.store.now()

    def count(self, *names: str) -> None:
        self.store.count(*names)

    def demo(self) -> dict[str, Any]:
        """IDs, secrets and passwords of the built-in directory (empty when started without it)."""
        with self.store.lock:
            return dict(self.store.data["demo"])

    # -- MailPolicy (the facade answers as `policy` does) ------------------------------------

    def verify_access_token(self, token: str) -> dict[str, Any]:
        return self.policy.verify_access_token(token)

    def mailbox_exists(self, address: str) -> bool:
        return self.policy.mailbox_exists(address)

    def smtp_auth_disabled(self, address: str) -> str | None:
        return self.policy.smtp_auth_disabled(address)

    def may_send_as(self, authenticated: str, from_address: str) -> bool:
        return self.policy.may_send_as(authenticated, from_address)

    def submission_limits(self, address: str) -> SubmissionLimits:
        return self.policy.submission_limits(address)

    def token_service(self, claims: dict[str, Any]) -> str:
        return self.policy.token_service(claims)

    def introspect(self, token: str, service: str) -> dict[str, Any]:
        return self.policy.introspect(token, service)

    # -- control operations that span the parts ----------------------------------------------

    def snapshot(self, params: dict[str, Any]) -> dict[str, Any]:
        """Tenants, apps, users and Google clients (what the control page and tests read)."""
        with self.store.lock:
            data = self.store.data
            return {
                "tenants": copy.deepcopy(data["tenants"]),
                "apps": self.apps.snapshot(),
                "users": copy.deepcopy(data["users"]),
                "google": self.google.snapshot(),
                "faults": self.faults.snapshot(),
                "settings": self.switches.settings(),
                "demo": self.demo(),
                "clock": self.switches.clock_info({}),
            }

    def revoke_grants(self, params: dict[str, Any]) -> dict[str, Any]:
        """Revoke every refresh token of a user (Microsoft: AADSTS50173 afterwards; Google: invalid_grant)."""
        address = str(require(params, "user")).strip().lower()
        with self.store.lock:
            microsoft = self.directory.revoke_user_grants(address)
            google = self.google.revoke_user_grants(address)
        if microsoft is None and google is None:
            raise ControlError("user", f"no sandbox user {address}")
        return {"user": address, "revoked": (microsoft or 0) + (google or 0)}

    def operations(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """Each control operation by name (POST /sandbox/control/<name>)."""
        directory, apps, google, switches = self.directory, self.apps, self.google, self.switches
        return {
            "snapshot": self.snapshot,
            "create_tenant": directory.create_tenant,
            "update_tenant": directory.update_tenant,
            "create_app": apps.create_app,
            "update_app": apps.update_app,
            "add_redirect_uri": apps.add_redirect_uri,
            "add_secret": apps.add_secret,
            "rotate_secret": apps.rotate_secret,
            "expire_secret": apps.expire_secret,
            "assign_user": apps.assign_user,
            "set_admin_consent": apps.set_admin_consent,
            "create_user": directory.create_user,
            "update_user": directory.update_user,
            "revoke_grants": self.revoke_grants,
            "grant_send_as": directory.grant_send_as,
            "set_limits": directory.set_limits,
            "set_faults": self.faults.set_faults,
            "set_clock": switches.set_clock,
            "clock": switches.clock_info,
            "update_settings": switches.update_settings,
            "counters": switches.counters,
            "reset_counters": switches.reset_counters,
            "create_google_project": google.create_google_project,
            "update_google_project": google.update_google_project,
            "create_google_user": google.create_google_user,
        }
