"""Fault rows against the sandbox's identity platform and its Exchange-like SMTP server."""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from mailgate.sandbox.server import Sandbox
from tests.chaos.lab import Lab, Row, lab, tally, wait_for
from tests.outbox.own_database import query


@contextlib.contextmanager
def exchange_lab(kind: str, home: Path) -> Iterator[tuple[Lab, Sandbox]]:
    with Sandbox(home / "sandbox", dovecot=False) as sandbox, lab(kind, home / "mg") as deployed:
        deployed.env.update(
            {k: v for k, v in sandbox.env().items() if not k.startswith("MAILGATE_SANDBOX_")}
        )
        deployed.env["SSL_CERT_FILE"] = str(sandbox.ca_file)
        yield deployed, sandbox


def connect(deployed: Lab, sandbox: Sandbox, *, expired: bool) -> None:
    """Create (or reconnect) the Outlook server as the callback would, through the sign-in pages."""
    host, _, port = sandbox.address("smtp").rpartition(":")
    deployed.python(
        f"""
import datetime as dt
from mailgate.oauth.models import Grant
from mailgate.oauth.tokens import store_grant
from mailgate.servers.models import MailServer
from tests.sandbox_fixtures import SMTP_SCOPE, demo_tokens
demo = {sandbox.demo!r}
server, _ = MailServer.objects.get_or_create(name="Contoso", defaults=dict(
    auth_method="outlook", username=demo["user"], client_id=demo["client_id"],
    client_secret=demo["client_secret"], smtp_host={host!r}, smtp_port={port},
    smtp_security="starttls", limit_per_minute=100000))
tokens = demo_tokens({sandbox.login_url!r}, {str(sandbox.ca_file)!r}, demo, state="chaos")
store_grant(server, tokens=tokens, account=demo["user"], scopes=SMTP_SCOPE.split())
if {expired!r}:
    Grant.objects.filter(server=server).update(
        access_expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
"""
    )


def enqueue(deployed: Lab, sandbox: Sandbox, first: int, count: int) -> None:
    deployed.python(
        f"""
from mailgate.outbox import enqueue
for i in range({first}, {first + count}):
    enqueue(from_address={sandbox.demo["user"]!r}, to=[f"user{{i}}@example.org"],
            subject=f"chaos {{i}}", text="x")
"""
    )


def delivered(sandbox: Sandbox) -> collections.Counter[str]:
    return collections.Counter(str(m.get("subject", "")) for m in sandbox.control.messages())


def expected(deployed: Lab) -> set[str]:
    return {r[0] for r in query(deployed.url, "SELECT subject FROM outbox_outgoingmessage")}


def identity_provider_fails(fault: str):
    """The token endpoint answers 500 / 503 / hangs while the worker needs a new access token."""
    settings = {"500": {"fail": 500}, "503": {"fail": 503}, "hang": {"timeout": True}}[fault]

    def scenario(kind: str, home: Path, bounded: bool) -> Row:
        total, lasting = (20, 5.0) if bounded else (200, 60.0)
        with exchange_lab(kind, home) as (deployed, sandbox):
            connect(deployed, sandbox, expired=True)
            enqueue(deployed, sandbox, 0, total)
            sandbox.control.set_faults(**settings)
            sandbox.control.reset_counters()
            deployed.worker()
            # The fault lasts `lasting` from the worker's first refresh attempt on.
            wait_for(lambda: sandbox.control.token_requests() > 0, 120, "a refresh attempt")
            time.sleep(lasting)
            during = len(sandbox.control.messages())
            sandbox.control.clear_faults()
            ended = time.monotonic()
            recovery = wait_for(lambda: len(sandbox.control.messages()) > 0, 120, "a delivery")
            drained = deployed.drained_since(ended, total)
            lost, duplicated = tally(expected(deployed), delivered(sandbox))
        return Row(
            f"identity provider {fault} during refresh ({lasting:g} s)",
            kind,
            total,
            lost,
            duplicated,
            recovery,
            drained,
            f"{during} sent during the fault; the grant's back-off (30 s, doubling) paces retries",
            crashes=0,
        )

    return scenario


def grant_revoked_mid_drain(kind: str, home: Path, bounded: bool) -> Row:
    """The grant is revoked while mail flows: the rest is held, then sent after a reconnect."""
    total = 20 if bounded else 200
    half = total // 2
    with exchange_lab(kind, home) as (deployed, sandbox):
        connect(deployed, sandbox, expired=False)
        enqueue(deployed, sandbox, 0, half)
        deployed.worker()
        wait_for(lambda: deployed.counts() == {"sent": half}, 120, "the first half sent")
        sandbox.control.revoke_grants(sandbox.demo["user"])
        # The access token runs out: the refresh meets the revoked grant (invalid_grant).
        query(deployed.url, "UPDATE oauth_grant SET access_expires_at = '2000-01-01 00:00:00+00'")
        enqueue(deployed, sandbox, half, total - half)
        wait_for(lambda: deployed.counts().get("held") == total - half, 120, "the rest held")
        status = query(deployed.url, "SELECT status FROM servers_mailserver")[0][0]
        # The administrator reconnects (a process that signs in and stores the grant, whose
        # signal releases the held mail): recovery counts from the start of it.
        reconnected = time.monotonic()
        connect(deployed, sandbox, expired=False)
        wait_for(lambda: len(sandbox.control.messages()) > half, 120, "held mail delivered")
        recovery = time.monotonic() - reconnected
        drained = deployed.drained_since(reconnected, total)
        lost, duplicated = tally(expected(deployed), delivered(sandbox))
    return Row(
        "grant revoked mid-drain, then reconnected",
        kind,
        total,
        lost,
        duplicated,
        recovery,
        drained,
        f"{total - half} held while the server showed {status!r}; times from the reconnect's start",
        crashes=0,
    )
