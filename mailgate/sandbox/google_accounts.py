"""The sandbox's Google side of the directory: OAuth clients (projects), Google users, consents and token records."""

from __future__ import annotations

import copy
import secrets
import string
from typing import Any

from mailgate.sandbox.codes import digest
from mailgate.sandbox.entra import new_password
from mailgate.sandbox.params import ControlError, as_list, lower, require
from mailgate.sandbox.store import StateStore

# Refresh tokens of a project in "Testing" expire after 7 days; unused ones after six months.
# Reference: https://developers.google.com/identity/protocols/oauth2 (refresh token expiration)
GOOGLE_TESTING_REFRESH_LIFETIME = 7 * 86400
GOOGLE_REFRESH_MAX_INACTIVE = 183 * 86400
GOOGLE_ACCESS_TOKEN_LIFETIME = 3599
PUBLISHING_STATUSES = ("testing", "production")


class GoogleAccounts:
    """Google OAuth clients and users (control operations), the users' consents, and token lookups."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    @property
    def _google(self) -> dict[str, Any]:
        return self.store.data["google"]

    def project(self, client_id: str) -> dict[str, Any] | None:
        with self.store.lock:
            project = self._google["projects"].get(client_id)
            return dict(project) if project else None

    def user(self, email: str) -> dict[str, Any] | None:
        with self.store.lock:
            user = self._google["users"].get(email)
            return dict(user) if user else None

    def access_token(self, token: str) -> dict[str, Any] | None:
        """The record of an access token this sandbox issued (live or not), by its value."""
        with self.store.lock:
            record = self._google["access_tokens"].get(digest(token))
            return dict(record) if record else None

    def consents(self, email: str, client_id: str) -> set[str]:
        with self.store.lock:
            return set(self._google["consents"].get(f"{email}|{client_id}", []))

    def add_consent(self, email: str, client_id: str, scopes: set[str]) -> None:
        with self.store.change():
            consents = self._google["consents"]
            key = f"{email}|{client_id}"
            consents[key] = sorted(set(consents.get(key, [])) | scopes)

    # -- control operations ------------------------------------------------------------------

    def create_google_project(self, params: dict[str, Any]) -> dict[str, Any]:
        name = str(require(params, "name"))
        status = str(params.get("publishing_status") or "testing")
        if status not in PUBLISHING_STATUSES:
            raise ControlError("publishing_status", "must be testing or production")
        number = "".join(secrets.choice(string.digits) for _ in range(12))
        suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(32))
        client_id = str(params.get("client_id") or f"{number}-{suffix}.apps.googleusercontent.com")
        uris = as_list("redirect_uris", params.get("redirect_uris"))
        with self.store.change():
            project = {
                "client_id": client_id,
                "client_secret": str(
                    params.get("client_secret") or "GOCSPX-" + secrets.token_urlsafe(21)[:28]
                ),
                "name": name,
                "redirect_uris": uris,
                "publishing_status": status,
            }
            self._google["projects"][client_id] = project
            return dict(project)

    def update_google_project(self, params: dict[str, Any]) -> dict[str, Any]:
        client_id = str(require(params, "client_id"))
        with self.store.change():
            project = self._google["projects"].get(client_id)
            if project is None:
                raise ControlError("client_id", f"no Google OAuth client {client_id}")
            if "publishing_status" in params:
                if params["publishing_status"] not in PUBLISHING_STATUSES:
                    raise ControlError("publishing_status", "must be testing or production")
                project["publishing_status"] = params["publishing_status"]
            if "redirect_uri" in params and params["redirect_uri"] not in project["redirect_uris"]:
                project["redirect_uris"].append(str(params["redirect_uri"]))
            if "redirect_uris" in params:
                project["redirect_uris"] = as_list("redirect_uris", params["redirect_uris"])
            if params.get("client_secret"):
                project["client_secret"] = str(params["client_secret"])
            return dict(project)

    def create_google_user(self, params: dict[str, Any]) -> dict[str, Any]:
        address = lower(str(require(params, "email")))
        with self.store.change():
            users = self._google["users"]
            if address in users:
                raise ControlError("email", f"{address} exists already")
            user = {
                "email": address,
                "password": str(params.get("password") or new_password()),
                "name": str(params.get("name") or address.split("@")[0].title()),
                "sub": "".join(secrets.choice(string.digits) for _ in range(21)),
            }
            users[address] = user
            return dict(user)

    def revoke_user_grants(self, address: str) -> int | None:
        """Revoke the user's refresh and access tokens; how many refresh tokens, None: no such user."""
        address = lower(address)
        with self.store.change():
            if address not in self._google["users"]:
                return None
            revoked = 0
            for rt in self._google["refresh_tokens"].values():
                if rt["email"] == address and not rt["revoked"]:
                    rt["revoked"] = True
                    revoked += 1
            for at in self._google["access_tokens"].values():
                if at["email"] == address:
                    at["revoked"] = True
            return revoked

    def snapshot(self) -> dict[str, Any]:
        with self.store.lock:
            return {
                "projects": copy.deepcopy(self._google["projects"]),
                "users": copy.deepcopy(self._google["users"]),
            }
