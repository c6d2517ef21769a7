"""The sandbox's persistent store: one JSON document in `<state>/state.json`, behind one lock, and its clock.

Every change is written atomically (temp file + rename, mode 0600) as it is made. Bearer secrets
(authorization codes, refresh tokens, Google access tokens) are kept only as digests (`codes.py`).
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Pending sign-ins (the browser between the authorize request and the code) older than this are dropped.
INTERACTION_LIFETIME = 3600


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


class StateStore:
    """Load, lock, change and save the state document; `layout` gives the keys a new one starts with.

    A document written by an older sandbox gets the keys it lacks from `layout` (one level deep).
    """

    def __init__(self, state_dir: Path, layout: dict[str, Any]) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # Others may pass through (Dovecot's unprivileged users reach <state>/mail) but not list it;
        # the files that hold secrets are 0600 themselves.
        os.chmod(self.dir, 0o711)  # noqa: S103
        self.path = self.dir / "state.json"
        self.lock = threading.RLock()
        if self.path.exists():
            self.data: dict[str, Any] = json.loads(self.path.read_text())
            for key, value in layout.items():
                stored = self.data.setdefault(key, copy.deepcopy(value))
                if isinstance(value, dict) and isinstance(stored, dict):
                    for inner, default in value.items():
                        stored.setdefault(inner, copy.deepcopy(default))
        else:
            self.data = copy.deepcopy(layout)
        self.data.setdefault("clock", {"offset": 0.0, "scale": 1.0})
        self.clock = Clock(**self.data["clock"])

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
            counters = self.data.setdefault("counters", {})
            for name in names:
                counters[name] = counters.get(name, 0) + 1


class PendingSignIns:
    """Authorization requests waiting for the browser's sign-in and consent (process memory only)."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._pending: dict[str, dict[str, Any]] = {}

    def add(self, ctx: dict[str, Any]) -> str:
        """Keep `ctx` (it must carry `created`, a monotonic time) and return its id for the page's form."""
        ctx_id = secrets.token_urlsafe(24)
        with self._lock:
            cutoff = time.monotonic() - INTERACTION_LIFETIME
            for key in [k for k, v in self._pending.items() if v["created"] < cutoff]:
                del self._pending[key]
            self._pending[ctx_id] = ctx
        return ctx_id

    def get(self, ctx_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._pending.get(ctx_id)

    def pop(self, ctx_id: str) -> None:
        with self._lock:
            self._pending.pop(ctx_id, None)
