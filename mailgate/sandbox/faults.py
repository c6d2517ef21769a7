"""Token endpoint fault injection shared by the Microsoft and Google token endpoints."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from mailgate.sandbox.params import ControlError, as_bool, as_number
from mailgate.sandbox.store import StateStore

FAULT_DEFAULTS: dict[str, Any] = {
    "delay": 0.0,
    "fail": None,
    "timeout": False,
    "timeout_seconds": 30.0,
    "flap": False,
    "remaining": None,
}
# A hanging token endpoint is released after this many seconds at most.
MAX_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class Fault:
    """An HTTP failure to answer instead of the real token response."""

    status: int


class TokenFaults:
    """The faults switched on through the control API (`set_faults`), applied to each token request."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def set_faults(self, params: dict[str, Any]) -> dict[str, Any]:
        """Token endpoint faults: delay (s), fail (500|503|null), timeout (bool), flap (bool), remaining (n)."""
        with self.store.change() as data:
            faults = data["faults"]
            if as_bool("clear", params.get("clear", False)):
                faults.clear()
                faults.update(FAULT_DEFAULTS)
            if "delay" in params:
                faults["delay"] = as_number("delay", params["delay"])
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
                    faults[key] = as_bool(key, params[key])
            if "timeout_seconds" in params:
                faults["timeout_seconds"] = min(
                    as_number("timeout_seconds", params["timeout_seconds"]), MAX_TIMEOUT_SECONDS
                )
            if "remaining" in params:
                value = params["remaining"]
                faults["remaining"] = (
                    None if value in (None, "", "null") else int(as_number("remaining", value))
                )
            return dict(faults)

    def snapshot(self) -> dict[str, Any]:
        with self.store.lock:
            return dict(self.store.data["faults"])

    def apply(self, stopping: threading.Event) -> Fault | None:
        """Sleep for the configured delay or hang (bounded, released on stop); return a failure to send, if any."""
        store = self.store
        with store.lock:
            faults = store.data["faults"]
            delay = float(faults["delay"])
            hang = float(faults["timeout_seconds"]) if faults["timeout"] else 0.0
            status: int | None = faults["fail"]
            if faults["flap"]:
                # Every other request fails, starting with the first one after the switch.
                flips = store.data["counters"].get("flap_sequence", 0)
                store.data["counters"]["flap_sequence"] = flips + 1
                status = 503 if flips % 2 == 0 else None
            active = bool(delay or hang or faults["fail"] or faults["flap"])
            if active and faults["remaining"] is not None:
                faults["remaining"] -= 1
                if faults["remaining"] <= 0:
                    faults.update(delay=0.0, fail=None, timeout=False, flap=False, remaining=None)
                store.save()
        if delay:
            stopping.wait(delay)
        if hang:
            stopping.wait(hang)
            return Fault(504)
        if status:
            store.count("token_requests_failed")
            return Fault(status)
        return None
