"""The worker loop: a list of steps, each returning whether it did something (healthchecks' sendalerts)."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from django.db import close_old_connections

log = logging.getLogger("mailgate.worker")

# Dotted paths of the steps the worker runs each cycle, in order. A step is `() -> bool`.
WORKER_STEPS: list[str] = [
    "mailgate.core.heartbeat.heartbeat_step",
    "mailgate.outbox.worker.deliver_step",
    "mailgate.outbox.hold.hold_step",
    "mailgate.inbox.idle.idle_step",
    "mailgate.inbox.fetcher.fetch_step",
    "mailgate.inbox.handoff.handoff_step",
    "mailgate.oauth.tokens.refresh_idle_grants",
    "mailgate.outbox.retention.purge_step",
    "mailgate.inbox.store.sweep_step",
]

IDLE_SLEEP_SECONDS = 1.0
# Dotted path of the idle wait `(stop_event, seconds) -> None`: it returns early when mail is queued,
# so that new mail is not left waiting for up to IDLE_SLEEP_SECONDS.
IDLE_WAIT = "mailgate.outbox.wakeup.wait_for_mail"
# Dotted path of `(done_event) -> Thread`: records that this worker is alive while it runs, however
# long a step takes (other workers release the claims of a worker that stopped beating).
KEEP_BEATING = "mailgate.core.heartbeat.keep_beating"


def lower_priority(steps: int) -> None:
    """Lower the calling thread's CPU priority by `steps` (Linux keeps a nice value per thread,
    and the threads it starts afterwards inherit it), so that in `mailgate run` only the worker
    thread gives way; where the system cannot, the worker runs as it is and says so."""
    if not steps or not hasattr(os, "setpriority"):
        return
    thread = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, now + steps))
    except OSError as exc:
        log.warning("worker: could not lower its CPU priority (MAILGATE_WORKER_NICE): %s", exc)


# The stopping event of the worker running in this process, for steps that check it between items.
_current_stop_event = threading.Event()


def current_stop_event() -> threading.Event:
    """The running worker's stopping event (a never-set event when no worker runs)."""
    return _current_stop_event


def load(path: str) -> Callable[..., object]:
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def load_steps() -> list[tuple[str, Callable[[], bool]]]:
    return [(path, load(path)) for path in WORKER_STEPS]  # type: ignore[misc]


def run_once() -> bool:
    """Run every step once; True when any of them did something."""
    did = False
    for name, step in load_steps():
        close_old_connections()
        try:
            did = bool(step()) or did
        except Exception:
            log.exception("worker step %s failed", name)
    close_old_connections()
    return did


class Worker:
    """Runs the steps until stopped; `stop()` (or SIGTERM/SIGINT) finishes the current step first."""

    def __init__(self, nice: int = 0) -> None:
        self.stopping = threading.Event()
        # CPU priority steps its thread gives up (the commands pass MAILGATE_WORKER_NICE).
        self.nice = nice

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        if not self.stopping.is_set():
            log.info("worker stopping after the current step")
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, *, max_cycles: int | None = None) -> None:
        global _current_stop_event
        _current_stop_event = self.stopping
        lower_priority(self.nice)
        idle_wait = load(IDLE_WAIT)
        # Beats until the last step has finished (`stopping` is set before it does).
        done = threading.Event()
        beating = load(KEEP_BEATING)(done)
        cycles = 0
        try:
            while not self.stopping.is_set():
                did = run_once()
                cycles += 1
                if max_cycles is not None and cycles >= max_cycles:
                    break
                if not did:
                    idle_wait(self.stopping, IDLE_SLEEP_SECONDS)
        finally:
            done.set()
            if isinstance(beating, threading.Thread):
                beating.join(timeout=5)
        log.info("worker stopped")
