"""Token endpoint fault injection shared by the Microsoft and Google token endpoints."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from mailgate.sandbox.state import SandboxState


@dataclass(frozen=True)
class Fault:
    """An HTTP failure to answer instead of the real token response."""

    status: int


def apply_faults(state: SandboxState, stopping: threading.Event) -> Fault | None:
    """Sleep for the configured delay or hang (bounded, released on stop); return a failure to send, if any."""
    with state.lock:
        faults = state.data["faults"]
        delay = float(faults["delay"])
        hang = float(faults["timeout_seconds"]) if faults["timeout"] else 0.0
        status: int | None = faults["fail"]
        if faults["flap"]:
            # Every other request fails, starting with the first one after the switch.
            flips = state.data["counters"].get("flap_sequence", 0)
            state.data["counters"]["flap_sequence"] = flips + 1
            status = 503 if flips % 2 == 0 else None
        active = bool(delay or hang or faults["fail"] or faults["flap"])
        if active and faults["remaining"] is not None:
            faults["remaining"] -= 1
            if faults["remaining"] <= 0:
                faults.update(delay=0.0, fail=None, timeout=False, flap=False, remaining=None)
            state.save()
    if delay:
        stopping.wait(delay)
    if hang:
        stopping.wait(hang)
        return Fault(504)
    if status:
        state.count("token_requests_failed")
        return Fault(status)
    return None
