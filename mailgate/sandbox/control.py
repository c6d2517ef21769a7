"""A small client for the sandbox control API (`POST /sandbox/control/<action>`), used by tests and `ctl`."""

from __future__ import annotations

from typing import Any

import httpx


class ControlAPIError(Exception):
    """The control API refused a request; `field` names the parameter at fault."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error_description") or body.get("error") or f"HTTP {status}")
        self.status = status
        self.field = body.get("field")
        self.body = body


class ControlClient:
    """Calls control actions on a running sandbox: `client.call("set_faults", fail=503)`."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        # One client for the life of this object: building an httpx client loads a CA bundle.
        self._http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def call(self, action: str, **params: Any) -> Any:
        response = self._http.post(f"{self.base_url}/sandbox/control/{action}", json=params)
        body = response.json()
        if response.status_code >= 400:
            raise ControlAPIError(response.status_code, body)
        return body

    # Named shortcuts for what tests reach for most.

    def snapshot(self) -> dict[str, Any]:
        return self.call("snapshot")

    def counters(self) -> dict[str, int]:
        return self.call("counters")

    def reset_counters(self) -> None:
        self.call("reset_counters")

    def token_requests(self, grant_type: str | None = None) -> int:
        """Token requests received by the Microsoft endpoint (all, or of one grant type)."""
        name = "token_requests" + (f"_{grant_type}" if grant_type else "")
        return int(self.counters().get(name, 0))

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        return self.call("set_faults", **faults)

    def clear_faults(self) -> dict[str, Any]:
        return self.call("set_faults", clear=True)

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        return self.call("set_clock", advance=seconds)

    def revoke_grants(self, user: str) -> dict[str, Any]:
        return self.call("revoke_grants", user=user)

    def expire_secret(self, client_id: str, secret_id: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"client_id": client_id}
        if secret_id:
            params["secret_id"] = secret_id
        return self.call("expire_secret", **params)

    def add_redirect_uri(self, client_id: str, uri: str) -> dict[str, Any]:
        return self.call("add_redirect_uri", client_id=client_id, uri=uri)

    def messages(self) -> list[dict[str, Any]]:
        return self.call("messages")
