"""What the sandbox's directory starts with: the built-in demo directory and the entries of a `--config` file."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from mailgate.sandbox.entra import APPLICATION_PERMISSIONS, AppRegistrations, EntraDirectory
from mailgate.sandbox.google_accounts import GoogleAccounts
from mailgate.sandbox.params import ControlError, as_list, lower
from mailgate.sandbox.switches import Switches


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


class Seeder:
    """Creates directory entries through the same operations the control API offers."""

    def __init__(
        self,
        directory: EntraDirectory,
        apps: AppRegistrations,
        google: GoogleAccounts,
        switches: Switches,
    ) -> None:
        self.directory = directory
        self.apps = apps
        self.google = google
        self.switches = switches

    def apply_config(self, config: dict[str, Any]) -> None:
        """Create what the config lists and does not exist yet (idempotent across restarts)."""
        for tenant in config.get("tenants", []):
            if not any(self.directory.tenant(d) for d in as_list("domains", tenant.get("domains"))):
                self.directory.create_tenant(tenant)
        for user in config.get("users", []):
            if self.directory.user(str(user.get("email", ""))) is None:
                self.directory.create_user(user)
        for app in config.get("apps", []):
            if not (app.get("client_id") and self.apps.app(str(app["client_id"]))):
                self.apps.create_app(app)
        google = config.get("google", {})
        for project in google.get("projects", []):
            client_id = project.get("client_id")
            if client_id is None or self.google.project(str(client_id)) is None:
                self.google.create_google_project(project)
        for guser in google.get("users", []):
            if self.google.user(lower(str(guser.get("email", "")))) is None:
                self.google.create_google_user(guser)
        for key, value in config.get("settings", {}).items():
            self.switches.update_settings({key: value})

    def demo(self) -> dict[str, Any]:
        """Create the built-in directory (Contoso, personal accounts, the demo app and Google client).

        Returns what the sandbox prints and `mailgate demo` configures: IDs, secrets, passwords.
        """
        tenant = self.directory.create_tenant({"name": "Contoso", "domains": ["contoso.example"]})
        self.directory.ensure_consumer_tenant()
        user = self.directory.create_user(
            {"email": "alex@contoso.example", "display_name": "Alex Wilber"}
        )
        self.directory.create_user(
            {"email": "megan@contoso.example", "display_name": "Megan Bowen"}
        )
        self.directory.create_user(
            {"email": "info@contoso.example", "kind": "shared", "display_name": "Info"}
        )
        consumer = self.directory.create_user(
            {"email": "jordan@hotmail.example", "kind": "consumer", "display_name": "Jordan"}
        )
        app = self.apps.create_app(
            {
                "name": "mailgate demo",
                "tenant": tenant["id"],
                "audience": "AzureADandPersonalMicrosoftAccount",
                "redirect_uris": ["http://127.0.0.1:8000/oauth/microsoft/callback"],
                "app_permissions": list(APPLICATION_PERMISSIONS),
            }
        )
        project = self.google.create_google_project(
            {
                "name": "mailgate demo",
                "redirect_uris": ["http://127.0.0.1:8000/oauth/google/callback"],
            }
        )
        guser = self.google.create_google_user({"email": "chris@gmail.example", "name": "Chris"})
        return {
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
