"""`record()`: write one audit event; `actor_scope()`: who acts in this request or command."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
from collections.abc import Iterable, Iterator

from mailgate.audit.models import KINDS, AuditEvent

log = logging.getLogger("mailgate.audit")

_actor: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "mailgate_audit_actor", default=("", "")
)
# A field or kind name: what record() accepts in `fields`, so no value can pass as a name.
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@contextlib.contextmanager
def actor_scope(actor: str, address: str = "") -> Iterator[None]:
    """Events recorded inside the block name this actor (an account, `cli`, `apikey:NAME`)."""
    token = _actor.set((actor, address))
    try:
        yield
    finally:
        _actor.reset(token)


def record(
    kind: str,
    *,
    subject: str = "",
    fields: Iterable[str] = (),
    actor: str | None = None,
    address: str | None = None,
) -> AuditEvent:
    """Store one event. `subject` is a name (server, key, account); `fields` are field names."""
    if kind not in KINDS:
        raise ValueError(f"unknown audit event kind {kind!r}")
    names = sorted(set(fields))
    bad = [n for n in names if not NAME_RE.match(n)]
    if bad:
        raise ValueError("audit fields must be field names, not values")
    current_actor, current_address = _actor.get()
    event = AuditEvent.objects.create(
        kind=kind,
        subject=subject[:200],
        fields=names,
        actor=(current_actor if actor is None else actor)[:200],
        address=(current_address if address is None else address)[:64],
    )
    log.info("audit: %s %s %s", kind, event.subject, ",".join(names))
    return event
