"""The sandbox-wide switches of the control API: the clock, token lifetimes and the request counters."""

from __future__ import annotations

import random
import time
from typing import Any

from mailgate.sandbox.params import ControlError, as_number
from mailgate.sandbox.store import StateStore


class Switches:
    """`set_clock` / `clock`, `update_settings`, `counters` / `reset_counters` over the store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    # -- clock -------------------------------------------------------------------------------

    def set_clock(self, params: dict[str, Any]) -> dict[str, Any]:
        """Advance the clock by `advance` seconds and/or run it `scale` times as fast."""
        clock = self.store.clock
        with self.store.change():
            if "advance" in params:
                clock.advance(as_number("advance", params["advance"], minimum=-1e10))
            if "scale" in params:
                scale = as_number("scale", params["scale"])
                if scale <= 0:
                    raise ControlError("scale", "must be greater than 0")
                clock.set_scale(scale)
            return self.clock_info({})

    def clock_info(self, params: dict[str, Any]) -> dict[str, Any]:
        now = self.store.now()
        return {"now": now, "scale": self.store.clock.scale, "offset": now - time.time()}

    # -- settings ----------------------------------------------------------------------------

    def update_settings(self, params: dict[str, Any]) -> dict[str, Any]:
        """access_token_lifetime: fixed seconds for every access token (null: random 60-90 minutes)."""
        with self.store.change() as data:
            if "access_token_lifetime" in params:
                value = params["access_token_lifetime"]
                data["settings"]["access_token_lifetime"] = (
                    None
                    if value in (None, "", "null")
                    else int(as_number("access_token_lifetime", value, minimum=1))
                )
            return dict(data["settings"])

    def settings(self) -> dict[str, Any]:
        with self.store.lock:
            return dict(self.store.data["settings"])

    def access_token_lifetime(self) -> int:
        """Seconds a new Microsoft access token lives: the fixed setting, else as Entra chooses."""
        fixed = self.settings().get("access_token_lifetime")
        if fixed:
            return int(fixed)
        # "a random value ranging between 60-90 minutes (75 minutes on average)"
        # Reference: https://learn.microsoft.com/en-us/entra/identity-platform/configurable-token-lifetimes
        return random.randint(3600, 5400)

    # -- counters ----------------------------------------------------------------------------

    def counters(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.store.lock:
            return dict(self.store.data["counters"])

    def reset_counters(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.store.change() as data:
            data["counters"] = {}
            return {}
