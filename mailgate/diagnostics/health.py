"""Health findings for administrators: what is broken, in plain words, and the setup step that fixes it.

`server_findings(server)` checks one mail server, `system_findings()` the deployment (database,
migrations, workers, public URL, encryption keys). The dashboard, `mailgate doctor` and alerts
read the same findings. Texts come from the existing catalogues (provider diagnoses, the outbox's
hold reasons, the connection test's summary) wherever one applies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import ssl
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Count, Min
from django.urls import reverse
from django.utils import timezone

from mailgate import providers
from mailgate.conf import IDENTITY_DEFAULTS, is_loopback_host
from mailgate.core.heartbeat import STALE_AFTER, latest_heartbeat, live_workers
from mailgate.crypto import DecryptionError, Sealed, decrypt, encrypted_fields
from mailgate.inbox.models import FetchState, IncomingMessage
from mailgate.inbox.models import Status as InboxStatus
from mailgate.oauth.models import Grant
from mailgate.outbox.hold import is_held
from mailgate.outbox.models import WAITING, OutgoingMessage, ServerState, Status
from mailgate.servers.forms import last_origin_warning, public_url_warning
from mailgate.servers.models import MailServer, ServerStatus
from mailgate.servers.validation import SECRET_EXPIRY_WARNING_DAYS

DAY = dt.timedelta(days=1)
# A waiting message older than this means mail is late, whatever the cause.
LATE_AFTER = dt.timedelta(hours=1)
# Throttles shorter than this are mailgate pacing itself within the provider's limits.
LONG_THROTTLE = dt.timedelta(minutes=5)
# Transient token endpoint failures are retried with back-off; report them once they persist.
TOKEN_FAILURES_TO_REPORT = 3
# The longest lifetime a provider allows for a client secret, where it limits it.
# Reference: https://learn.microsoft.com/entra/identity-platform/how-to-add-credentials (24 months)
MAX_SECRET_LIFETIME: dict[str, dt.timedelta] = {"microsoft": dt.timedelta(days=730)}

# The console's breadcrumb separator (U+203A, written as an escape).
SEP = " \u203a "
SERVERS_PATH = SEP.join(["Settings", "Technical", "Mail Server", "Mail Servers"])

# The commands that fix system findings (shown beside "Fix:" and in `doctor --json`).
MIGRATE = "mailgate migrate"
START_WORKER = "mailgate worker"
ROTATE_KEYS = "mailgate rotate-keys"
# Free space below either of these on MAILGATE_HOME's filesystem is a warning, and below a fifth
# of them an error: SQLite (and the generated keys) need room to write, the WAL included.
LOW_DISK_BYTES = 500 * 1024 * 1024
LOW_DISK_FRACTION = 0.05


class Level(StrEnum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


SEVERITY = {Level.OK: 0, Level.WARNING: 1, Level.ERROR: 2}


@dataclass(frozen=True)
class Finding:
    """One check's result: level, a title, what was seen (detail) and the step that fixes it."""

    level: Level
    title: str
    detail: str = ""
    fix: str = ""
    check: str = ""  # a stable name for machines, e.g. "secret_expired"
    fix_url: str = ""  # the console page where the fix is made (the dashboard links "Fix:" to it)
    fix_command: str = ""  # or the command that makes it, where the fix is not on a page

    @property
    def fixable(self) -> bool:
        """A problem with somewhere to go: a page (fix_url) or a command (fix_command)."""
        return bool(self.fix_url or self.fix_command)

    @property
    def needs_action(self) -> bool:
        return self.level != Level.OK

    def as_dict(self) -> dict[str, str]:
        return {
            "level": str(self.level),
            "check": self.check,
            "title": self.title,
            "detail": self.detail,
            "fix": self.fix,
            "fix_url": self.fix_url,
            "fix_command": self.fix_command,
        }


def worst(findings: Iterable[Finding]) -> Level:
    """The most severe level among the findings (ok when there are none)."""
    return max((f.level for f in findings), key=SEVERITY.__getitem__, default=Level.OK)


def split_fix(text: str) -> tuple[str, str]:
    """Split a stored diagnosis ("... Fix: ...", see providers.base.Diagnosis.as_text) in two."""
    head, sep, tail = text.partition(" Fix: ")
    return (head.strip(), tail.strip()) if sep else (text.strip(), "")


# -- per server ------------------------------------------------------------------------------


@dataclass
class QueueCounts:
    """A server's outbox right now, and what happened in the last 24 hours."""

    queued: int = 0
    sending: int = 0
    deferred: int = 0
    held: int = 0
    failed_24h: int = 0
    sent_24h: int = 0

    @property
    def waiting(self) -> int:
        return self.queued + self.deferred


@dataclass
class ServerReport:
    server: MailServer
    findings: list[Finding] = field(default_factory=list)
    queue: QueueCounts = field(default_factory=QueueCounts)
    grant: Grant | None = None

    @property
    def level(self) -> Level:
        return worst(self.findings)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.needs_action]


@dataclass
class _Facts:
    """Everything the server checks read, fetched for many servers with a few grouped queries."""

    queues: dict[int, QueueCounts]
    grants: dict[int, Grant]
    states: dict[int, ServerState]
    oldest_waiting: dict[int, dt.datetime]


def _collect(server_ids: list[int] | None, now: dt.datetime) -> _Facts:
    def scoped(qs: Any) -> Any:
        return qs if server_ids is None else qs.filter(server_id__in=server_ids)

    messages = scoped(OutgoingMessage.objects.order_by())
    queues: dict[int, QueueCounts] = defaultdict(QueueCounts)
    live = (Status.QUEUED, Status.SENDING, Status.DEFERRED, Status.HELD)
    for server_id, status, n in (
        messages.filter(status__in=live)
        .values("server_id", "status")
        .annotate(n=Count("id"))
        .values_list("server_id", "status", "n")
    ):
        setattr(queues[server_id], str(status), n)
    since = now - DAY
    for server_id, n in (
        messages.filter(status=Status.FAILED, updated_at__gte=since)
        .values("server_id")
        .annotate(n=Count("id"))
        .values_list("server_id", "n")
    ):
        queues[server_id].failed_24h = n
    for server_id, n in (
        messages.filter(status=Status.SENT, sent_at__gte=since)
        .values("server_id")
        .annotate(n=Count("id"))
        .values_list("server_id", "n")
    ):
        queues[server_id].sent_24h = n
    oldest = dict(
        messages.filter(status__in=WAITING)
        .values("server_id")
        .annotate(oldest=Min("created_at"))
        .values_list("server_id", "oldest")
    )
    # The tokens themselves are never loaded here.
    grants = {
        g.server_id: g for g in scoped(Grant.objects.all()).defer("refresh_token", "access_token")
    }
    states = {s.server_id: s for s in scoped(ServerState.objects.all())}
    return _Facts(queues, grants, states, oldest)


def server_reports(
    servers: Iterable[MailServer] | None = None, *, now: dt.datetime | None = None
) -> list[ServerReport]:
    """A report per server (every server when None), with findings and queue counts."""
    now = now or timezone.now()
    server_list = list(MailServer.objects.all() if servers is None else servers)
    ids = None if servers is None else [s.pk for s in server_list]
    facts = _collect(ids, now)
    reports = []
    for server in server_list:
        report = ServerReport(
            server,
            queue=facts.queues.get(server.pk, QueueCounts()),
            grant=facts.grants.get(server.pk),
        )
        page = reverse("servers:edit", args=[server.pk]) + "#connection"
        report.findings = [
            dataclasses.replace(f, fix_url=f.fix_url or page) if f.fix else f
            for f in _server_findings(server, report, facts, now)
        ]
        reports.append(report)
    return reports


def server_findings(server: MailServer, *, now: dt.datetime | None = None) -> list[Finding]:
    """What is wrong with one server (errors and warnings first), or ok findings when nothing is."""
    return server_reports([server], now=now)[0].findings


def _where(server: MailServer) -> str:
    return f"Open {SERVERS_PATH}{SEP}{server.name}"


def _server_findings(
    server: MailServer, report: ServerReport, facts: _Facts, now: dt.datetime
) -> list[Finding]:
    found: list[Finding] = []
    queue = report.queue
    if not server.active:
        pending = queue.waiting + queue.held
        if pending:
            found.append(
                Finding(
                    Level.WARNING,
                    f"Inactive server with {pending} queued message{'s' if pending != 1 else ''}",
                    "An inactive server sends nothing: its queued and held mail waits until it "
                    "is active again.",
                    f"{_where(server)} and tick Active, or cancel the messages in the Outbox "
                    "(`mailgate outbox cancel ID`).",
                    "inactive_with_mail",
                )
            )
        else:
            found.append(
                Finding(Level.OK, "Inactive", "It sends and fetches nothing.", check="inactive")
            )
        return found

    for check in (
        _connection_state,
        _held_queue,
        _client_secret,
        _token_refresh,
        _last_test,
        _throttle,
        _failed_messages,
        _late_messages,
        _incoming,
    ):
        found.extend(check(server, report, facts, now))
    if not found:
        found.append(Finding(Level.OK, "No problem found", check="server"))
    found.sort(key=lambda f: -SEVERITY[f.level])
    return found


def _connection_state(
    server: MailServer, report: ServerReport, facts: _Facts, now: dt.datetime
) -> list[Finding]:
    flow = providers.get(server.provider_key).flow if server.provider_key else None
    if server.status == ServerStatus.RECONNECT_REQUIRED:
        detail, fix = split_fix(server.status_detail)
        if not fix and flow is not None:
            fix = flow.explain("invalid_grant", "").fix
        return [
            Finding(
                Level.ERROR,
                "Reconnect required",
                detail or "The provider no longer accepts the stored grant.",
                f"{_where(server)}: {fix}" if fix else _where(server),
                "reconnect_required",
            )
        ]
    if server.is_oauth and report.grant is None:
        label = providers.get(server.provider_key or "").connect_label
        return [
            Finding(
                Level.ERROR,
                "Not connected",
                "This OAuth server is not connected (never, or disconnected since), so it can "
                "neither send nor fetch mail.",
                f"{_where(server)} and press {label}, signing in as "
                f"{server.username or 'the mailbox user'}.",
                "not_connected",
            )
        ]
    grant = report.grant
    if (
        server.status == ServerStatus.FAILING
        and not (grant is not None and grant.last_error)
        and server.last_test_ok is not False
        # Failing because the queue is held: the held-queue finding says it, with the fix.
        and not (is_held(server) and server.status_detail == server.hold_reason)
    ):
        detail, fix = split_fix(server.status_detail)
        return [
            Finding(
                Level.ERROR,
                "Failing",
                detail or "The last attempt to use this server failed.",
                f"{_where(server)}: {fix}"
                if fix
                else f"{_where(server)} and press Test Connection.",
                "failing",
            )
        ]
    # Never "Token Valid" while the server's mail is held: the token is not what matters then.
    if grant is not None and grant.is_token_valid(now) and not is_held(server):
        return [
            Finding(
                Level.OK,
                "Token Valid",
                f"Connected as {grant.account}; last token obtained "
                f"{grant.last_success_at:%Y-%m-%d %H:%M} UTC.",
                check="token",
            )
        ]
    return []


def _held_queue(
    server: MailServer, report: ServerReport, facts: _Facts, now: dt.datetime
) -> list[Finding]:
    if not is_held(server):
        return []
    reason, fix = split_fix(server.hold_reason)
    since = f" since {server.held_at:%Y-%m-%d %H:%M} UTC" if server.held_at else ""
    held = report.queue.held
    return [
        Finding(
            Level.ERROR,
            f"Outgoing queue held ({held} message{'s' if held != 1 else ''})",
            f"Held{since}: {reason}" if reason else f"Held{since}.",
            (fix + " " if fix else "")
            + "A passing Test Connection (or reconnecting the account) releases the queue; "
            "nothing held is lost.",
            "queue_held",
        )
    ]


def _client_secret(
    server: MailServer, report: ServerReport, facts: _Facts, now: dt.datetime
) -> list[Finding]:
    if not server.is_oauth or server.client_secret is None:
        return []
    key = server.provider_key or ""
    flow = providers.get(key).flow
    # The provider's own advice for a refused client secret names where to create a new one.
    secret_fix = flow.explain("invalid_client", "").fix if flow else ""
    where = f"{_where(server)} (Client Secret, Client Secret Expires On)"
    lifetime = MAX_SECRET_LIFETIME.get(key)
    expires = server.client_secret_expires_on
    if expires is None:
        if lifetime is None:
            return []
        return [
            Finding(
                Level.WARNING,
                "Client secret expiry unknown",
                f"{providers.get(key).label} client secrets expire (at most "
                f"{lifetime.days // 365 * 12} months after creation); with Client Secret "
                "Expires On empty, mailgate cannot warn before token requests start failing.",
                f"{where}: enter the Expires date shown next to the secret in the app "
                "registration.",
                "secret_expiry_unknown",
            )
        ]
    days = (expires - timezone.localdate(now)).days
    if days < 0:
        return [
            Finding(
                Level.ERROR,
                f"Client secret expired on {expires.isoformat()}",
                "Token requests fail with an expired client secret; mail that needs a new token "
                "waits (nothing is lost).",
                f"{where}: {secret_fix}",
                "secret_expired",
            )
        ]
    if days <= SECRET_EXPIRY_WARNING_DAYS:
        when = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
        cap = f" New secrets live at most {lifetime.days // 365 * 12} months." if lifetime else ""
        return [
            Finding(
                Level.WARNING,
                f"Client secret expires {when} ({expires.isoformat()})",
                "Create the new secret before then so sending never stops." + cap,
                f"{where}: {secret_fix}",
                "secret_expiring",
            )
        ]
    if lifetime is not None and expires - timezone.localdate(now) > lifetime:
        return [
            Finding(
                Level.WARNING,
                f"Client secret expiry {expires.isoformat()} is too far away",
                f"{providers.get(key).label} client secrets live at most "
                f"{lifetime.days // 365 * 12} months: the date entered is probably not the "
                "secret's real expiry, so the warning would come too late.",
                f"{where}: enter the Expires date shown next to the secret in the app "
                "registration.",
                "secret_expiry_implausible",
            )
        ]
    return []


def _token_refresh(
    server: MailServer, report: ServerReport, facts: _Facts, now: dt.datetime
) -> list[Finding]:
    grant = report.grant
    if grant is None or grant.is_dead or not grant.last_error:
        return []
    detail, fix = split_fix(grant.last_error_diagnosis)
    retry = (
        f" mailgate retries at {grant.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC."
        if grant.next_attempt_at
        else ""
    )
    since = (
        f" (since {grant.last_error_at:%Y-%m-%d %H:%M} UTC, {grant.failures} failures)"
        if grant.last_error_at
        else f" ({grant.failures} failures)"
    )
    if server.status == ServerStatus.FAILING:
        level = Level.ERROR  # the client credentials were refused: only an administrator can fix it
    elif grant.failures >= TOKEN_FAILURES_TO_REPORT:
        level = Level.WARNING
    else:
        level = Level.OK
    return [
        Finding(
            level,
            "Token refresh failing" if level != Level.OK else "Token refresh retrying",
            f"{grant.last_error}{since}. {detail}".strip() + retry,
            f"{_where(server)}: {fix}" if fix else "",
            "token_refresh",
        )
    ]


def _last_test(
    server: MailServer, report: ServerReport, facts: _Facts, now: dt.datetime
) -> list[Finding]:
    if server.last_test_ok is None or server.last_test_at is None:
        return [
            Finding(
                Level.OK,
                "Connection test not run yet",
                fix=f"{_where(server)} and press Test Connection.",
                check="last_test",
            )
        ]
    when = f"{server.last_test_at:%Y-%m-%d %H:%M} UTC"
    if server.last_test_ok:
        return [Finding(Level.OK, "Connection test succeeded", when, check="last_test")]
    lines = server.last_test_summary.splitlines()
    diagnosis = next((ln for ln in lines if ln.startswith("Diagnosis: ")), "")
    failed = next((ln for ln in lines if ln.startswith("[FAILED]")), "")
    detail, fix = split_fix(diagnosis.removeprefix("Diagnosis: "))
    return [
        Finding(
            Level.ERROR,
            "Last connection test failed",
            f"{when}: {failed.removeprefix('[FAILED] ')}" + (f" — {detail}" if detail else ""),
            f"{_where(server)}, fix the failing step"
            + (f" ({fix})" if fix else "")
            + ", then press Test Connection.",
            "last_test",
        )
    ]


def _throttle(
    server: MailServer, report: ServerReport, facts: _Facts, now: dt.datetime
) -> list[Finding]:
    state = facts.states.get(server.pk)
    if state is None or state.next_allowed_at is None or state.next_allowed_at <= now:
        return []
    pause = state.next_allowed_at - now
    reason, fix = split_fix(state.throttle_reason)
    long = pause >= LONG_THROTTLE
    return [
        Finding(
            Level.WARNING if long else Level.OK,
            f"Throttled until {state.next_allowed_at:%Y-%m-%d %H:%M:%S} UTC",
            (reason or "Sending is paused to stay within the provider's limits.")
            + " Queued mail waits and is sent afterwards.",
            fix
            or (
                "Nothing to do if it is rare; if it recurs, spread mail over more mailboxes or "
                f"lower Messages per Minute ({_where(server)})."
                if long
                else ""
            ),
            "throttled",
        )
    ]


def _failed_messages(
    server: MailServer, report: ServerReport, facts: _Facts, now: dt.datetime
) -> list[Finding]:
    failed = report.queue.failed_24h
    if not failed:
        return []
    latest = (
        OutgoingMessage.objects.filter(server=server, status=Status.FAILED)
        .order_by("-updated_at")
        .only("id", "diagnosis", "last_reply", "last_error")
        .first()
    )
    why = ""
    if latest is not None:
        why = f" Latest (#{latest.pk}): {latest.last_reply or latest.last_error}".rstrip(": ")
        if latest.diagnosis:
            why += f" — {latest.diagnosis}"
    return [
        Finding(
            Level.WARNING,
            f"{failed} message{'s' if failed != 1 else ''} failed in the last 24 hours",
            f"The server refused them permanently.{why}",
            "Open the Outbox (status Failed) for each message's diagnosis; once the cause is "
            "fixed, `mailgate outbox retry ID` sends one again.",
            "failed_messages",
        )
    ]


def _late_messages(
    server: MailServer, report: ServerReport, facts: _Facts, now: dt.datetime
) -> list[Finding]:
    oldest_at = facts.oldest_waiting.get(server.pk)
    if oldest_at is None or now - oldest_at < LATE_AFTER:
        return []
    oldest = (
        OutgoingMessage.objects.filter(server=server, status__in=WAITING, created_at=oldest_at)
        .only("id", "status", "attempts", "diagnosis", "last_reply", "last_error")
        .first()
    )
    age = _age(now - oldest_at)
    detail = f"The oldest waiting message was queued {age} ago."
    fix = (
        "Check that a worker runs (`mailgate worker` or `mailgate run`) and the findings above; "
        "see the message in the Outbox."
    )
    if oldest is not None:
        detail = (
            f"Message #{oldest.pk} was queued {age} ago and is {oldest.status} after "
            f"{oldest.attempts} attempt{'s' if oldest.attempts != 1 else ''}."
        )
        last = oldest.last_reply or oldest.last_error
        if last:
            detail += f" Last error: {last}"
        if oldest.diagnosis:
            detail += f" — {oldest.diagnosis}"
    return [Finding(Level.WARNING, f"Mail waiting for {age}", detail, fix, "late_messages")]


def incoming_lag(state: FetchState | None, now: dt.datetime) -> dt.timedelta | None:
    """How far behind the mailbox is: the time since the last successful fetch."""
    if state is None or state.last_success_at is None:
        return None
    return max(now - state.last_success_at, dt.timedelta())


def _incoming(
    server: MailServer, report: ServerReport, facts: _Facts, now: dt.datetime
) -> list[Finding]:
    if not server.has_incoming:
        return []
    state = FetchState.objects.filter(pk=server.pk).first()
    found: list[Finding] = []
    quarantined = IncomingMessage.objects.filter(
        server=server, status=InboxStatus.QUARANTINED
    ).count()
    if quarantined:
        found.append(
            Finding(
                Level.WARNING,
                f"{quarantined} incoming message{'s' if quarantined != 1 else ''} in Quarantine",
                "The application's handler or webhook kept failing for them; the mailbox "
                "goes on being fetched.",
                "Fix the handler or the webhook endpoint, then open Inbox > Quarantine and "
                "press Retry.",
                "inbox_quarantine",
                fix_url=reverse("inbox:list")
                + f"?{urlencode({'status': InboxStatus.QUARANTINED, 'server': server.pk})}",
            )
        )
    if state is None or state.last_fetch_at is None:
        found.append(Finding(Level.OK, "Incoming mail not fetched yet", check="inbox_fetch"))
        return found
    lag = incoming_lag(state, now)
    behind = f"last fetched {state.last_fetch_at:%Y-%m-%d %H:%M:%S} UTC" + (
        f", {_age(lag)} behind" if lag is not None else ", never successfully"
    )
    if state.failures:
        detail, fix = split_fix(state.diagnosis)
        found.append(
            Finding(
                Level.ERROR if state.flagged else Level.WARNING,
                "Fetching incoming mail keeps failing"
                if state.flagged
                else "The last fetch of incoming mail failed",
                f"{behind}; {state.failures} failure{'s' if state.failures != 1 else ''} in a "
                f"row: {state.last_error}" + (f" — {detail}" if detail else ""),
                fix
                or f"{_where(server)}, check the Incoming Mail settings and press Test "
                "Connection; mailgate retries with back-off.",
                "inbox_fetch",
            )
        )
        return found
    slow = dt.timedelta(seconds=max(3 * server.poll_interval, 600))
    if lag is not None and lag > slow:
        found.append(
            Finding(
                Level.WARNING,
                "Incoming mail is behind",
                behind,
                "Start a worker (`mailgate worker`) or check that it runs.",
                "inbox_lag",
                fix_command=START_WORKER,
            )
        )
    else:
        found.append(Finding(Level.OK, "Incoming mail fetched", behind, check="inbox_fetch"))
    return found


def _age(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} minutes"
    if minutes < 48 * 60:
        return f"{minutes // 60} hours"
    return f"{minutes // (24 * 60)} days"


# -- the deployment --------------------------------------------------------------------------


def system_findings(*, now: dt.datetime | None = None) -> list[Finding]:
    """What is wrong with the deployment itself: database, migrations, workers, URL, keys."""
    now = now or timezone.now()
    database = _database()
    if database.needs_action:
        return [database]  # every other check reads the database
    found = [database]
    migrations = _guarded(_migrations)
    found.extend(migrations)
    checks = [_public_url, _identity_endpoints, _python, _disk]
    if not needs_action(migrations):  # the other checks read tables a migration may create
        checks += [lambda: _workers(now), _encryption_keys]
    for check in checks:
        found.extend(_guarded(check))
    found.sort(key=lambda f: -SEVERITY[f.level])
    return found


def _guarded(check: Callable[[], list[Finding]]) -> list[Finding]:
    """The check's findings, or an error finding when the check itself broke."""
    try:
        return check()
    except Exception as exc:  # one broken check must not hide the others
        return [
            Finding(
                Level.ERROR,
                "A health check could not run",
                f"{type(exc).__name__}: {exc}",
                "Run `mailgate migrate`, then `mailgate doctor` again.",
                "check_failed",
                fix_command=MIGRATE,
            )
        ]


def _database() -> Finding:
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return Finding(
            Level.ERROR,
            "Database unreachable",
            f"{connection.vendor}: {type(exc).__name__}: {exc}".strip(),
            "Check MAILGATE_DATABASE_URL and that the database server runs and accepts "
            "connections from this machine.",
            "database",
            fix_command=_database_check_command(connection.settings_dict),
        )
    size = database_size()
    detail = connection.vendor + (f", size {_megabytes(size)}" if size is not None else "")
    return Finding(Level.OK, "Database reachable", detail, check="database")


def _database_check_command(database: dict[str, Any]) -> str:
    """The command that shows whether the database can be reached once the fix is in."""
    if str(database.get("ENGINE", "")).endswith("postgresql"):
        host = database.get("HOST") or "127.0.0.1"
        port = database.get("PORT") or 5432
        return f"pg_isready -h {host} -p {port}"
    return MIGRATE  # SQLite: creates the file where MAILGATE_HOME can be written


def database_size() -> int | None:
    """The database's size in bytes (the SQLite file with its WAL, or the PostgreSQL database);
    None when it cannot be read."""
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT pg_database_size(current_database())")
                row = cursor.fetchone()
                return int(row[0]) if row else None
            if connection.vendor == "sqlite":
                name = str(connection.settings_dict["NAME"])
                files = [Path(name), Path(name + "-wal")]
                if any(f.is_file() for f in files):
                    return sum(f.stat().st_size for f in files if f.is_file())
                cursor.execute("PRAGMA page_count")
                pages = cursor.fetchone()
                cursor.execute("PRAGMA page_size")
                page_size = cursor.fetchone()
                return int(pages[0]) * int(page_size[0]) if pages and page_size else None
    except Exception:  # a size is a nicety: never a reason for a failing health check
        return None
    return None


def _disk() -> list[Finding]:
    """Free space where MAILGATE_HOME is: the SQLite database, its WAL, the keys and large
    incoming messages are written there; a full disk stops the API (503) and the worker."""
    home = Path(settings.MAILGATE_HOME)
    if not home.is_dir():
        return []
    usage = shutil.disk_usage(home)
    free_fraction = usage.free / usage.total if usage.total else 1.0
    detail = (
        f"{_size(usage.free)} free of {_size(usage.total)} "
        f"({free_fraction:.0%}) on the filesystem of MAILGATE_HOME ({home})."
    )
    if usage.free >= LOW_DISK_BYTES or free_fraction >= LOW_DISK_FRACTION:
        return [Finding(Level.OK, "Disk space", detail, check="disk")]
    full = usage.free < LOW_DISK_BYTES / 5 and free_fraction < LOW_DISK_FRACTION / 5
    on_sqlite = connections[DEFAULT_DB_ALIAS].vendor == "sqlite"
    return [
        Finding(
            Level.ERROR if full else Level.WARNING,
            "MAILGATE_HOME's disk is " + ("almost full" if full else "filling up"),
            detail + " When it is full the API answers 503 and nothing is sent or fetched until "
            "space returns (nothing accepted is lost).",
            "Free space on that filesystem or give it more"
            + (
                "; deleting the content of long-finished messages makes room in the database: "
                "`mailgate purge --older-than 7`."
                if on_sqlite
                else "."
            ),
            "disk",
            fix_command="mailgate purge --older-than 7" if on_sqlite else f"du -sh {home}/*",
        )
    ]


def _size(size: int) -> str:
    return f"{size / 1_000_000_000:.1f} GB" if size >= 10_000_000_000 else _megabytes(size)


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def _migrations() -> list[Finding]:
    connection = connections[DEFAULT_DB_ALIAS]
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if not plan:
        return [Finding(Level.OK, "Database schema up to date", check="migrations")]
    names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:5])
    more = f" and {len(plan) - 5} more" if len(plan) > 5 else ""
    return [
        Finding(
            Level.ERROR,
            f"{len(plan)} database migration{'s' if len(plan) != 1 else ''} not applied",
            f"The code expects a newer schema: {names}{more}.",
            "Run `mailgate migrate` (`mailgate run` migrates at start), then restart the web and "
            "worker processes.",
            "migrations",
            fix_command=MIGRATE,
        )
    ]


def _workers(now: dt.datetime) -> list[Finding]:
    alive = live_workers(now)
    if alive:
        names = ", ".join(f"{w.hostname} (pid {w.pid})" for w in alive[:5])
        return [
            Finding(
                Level.OK,
                f"{len(alive)} worker{'s' if len(alive) != 1 else ''} running",
                f"Seen in the last {int(STALE_AFTER.total_seconds() // 60)} minutes: {names}.",
                check="worker",
            )
        ]
    waiting = OutgoingMessage.objects.filter(status__in=WAITING).count()
    last = latest_heartbeat()
    seen = (
        f"The last worker ({last.hostname}, pid {last.pid}) was seen "
        f"{last.last_seen_at:%Y-%m-%d %H:%M:%S} UTC."
        if last is not None
        else "No worker has run in the last day."
    )
    minutes = int(STALE_AFTER.total_seconds() // 60)
    return [
        Finding(
            Level.ERROR if waiting else Level.WARNING,
            f"No worker has run in the last {minutes} minutes",
            (
                f"Queued mail is not being sent ({waiting} message{'s' if waiting != 1 else ''} "
                "waiting) and tokens are not kept fresh. "
                if waiting
                else "Queued mail would not be sent and tokens are not kept fresh. "
            )
            + seen,
            "Start `mailgate worker` (or `mailgate run`, which runs one).",
            "worker",
            fix_command=START_WORKER,
        )
    ]


def _public_url() -> list[Finding]:
    found = []
    warning = public_url_warning()
    if warning:
        head, sep, fix = warning.partition(". ")
        https = urlsplit(settings.MAILGATE_PUBLIC_URL)._replace(scheme="https").geturl()
        found.append(
            Finding(
                Level.WARNING,
                "MAILGATE_PUBLIC_URL is not https",
                head + sep.rstrip(),
                fix,
                "public_url",
                fix_command=f"export MAILGATE_PUBLIC_URL={https}",
            )
        )
    warning = last_origin_warning()
    if warning:
        head, sep, fix = warning.partition("registered. ")
        found.append(
            Finding(
                Level.WARNING,
                "The console is opened at another address than MAILGATE_PUBLIC_URL",
                head + sep.rstrip(),
                fix,
                "public_url_origin",
                # The console at the address the redirect URLs are built from.
                fix_url=settings.MAILGATE_PUBLIC_URL.rstrip("/") + "/",
            )
        )
    return found


def _is_production() -> bool:
    """A public URL that is not this machine: real users, real mailboxes."""
    return not is_loopback_host(urlsplit(settings.MAILGATE_PUBLIC_URL).hostname)


def _identity_endpoints() -> list[Finding]:
    """Sign-ins and tokens going somewhere other than Microsoft and Google, in production."""
    if not _is_production():
        return []
    moved = [
        f"{name}={getattr(settings, name)}"
        for name, default in IDENTITY_DEFAULTS.items()
        if getattr(settings, name) != default
    ]
    cert_file = os.environ.get("SSL_CERT_FILE", "")
    if cert_file and not _is_system_trust(cert_file):
        moved.append(f"SSL_CERT_FILE={cert_file}")
    if not moved:
        return []
    return [
        Finding(
            Level.WARNING,
            "Identity endpoints or trusted certificates are not the defaults",
            "In a production setup, " + ", ".join(moved) + ": whoever runs those endpoints (or "
            "holds those CA keys) sees the sign-ins and can issue tokens mailgate believes.",
            "Unset them unless this is deliberate (a sandbox or an inspecting proxy you run); "
            "the defaults are Microsoft's and Google's endpoints and the system trust store.",
            "identity_endpoints",
            fix_command="unset " + " ".join(m.split("=", 1)[0] for m in moved),
        )
    ]


# CVE-2024-6923: the email package could write a header value's newlines through unchanged.
PATCHED_PYTHON = {(3, 11): (3, 11, 10), (3, 12): (3, 12, 5)}


def _python() -> list[Finding]:
    """A Python without the standard library's header fix, reported (not an action: mailgate
    refuses line breaks in header values itself, so it does not depend on that fix)."""
    needed = PATCHED_PYTHON.get(sys.version_info[:2])
    if needed is None or sys.version_info[:3] >= needed or not _is_production():
        return []
    version = ".".join(map(str, sys.version_info[:3]))
    return [
        Finding(
            Level.OK,
            f"Python {version} lacks the email header fix (CVE-2024-6923)",
            "mailgate refuses line breaks in header values itself; the standard library's own "
            "guard arrives with Python " + ".".join(map(str, needed)) + ".",
            "Upgrade Python when convenient.",
            "python",
        )
    ]


# Where operating systems keep their trust store: an SSL_CERT_FILE naming one trusts no one extra.
SYSTEM_TRUST_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)


def _is_system_trust(path: str) -> bool:
    defaults = ssl.get_default_verify_paths()
    known = {*SYSTEM_TRUST_FILES, defaults.cafile or "", defaults.openssl_cafile or ""}
    real = os.path.realpath(path)
    return any(k and os.path.realpath(k) == real for k in known)


@dataclass
class SecretScan:
    """Stored secrets by the key that reads them: the newest, an older one, or none configured."""

    total: int = 0
    old_key: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unreadable: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    advice: str = ""  # mailgate.crypto's explanation of a secret no key reads


def scan_secrets(keys: list[bytes] | None = None) -> SecretScan:
    """Try every stored secret with the newest key only, then with all keys."""
    keys = list(settings.MAILGATE_ENCRYPTION_KEYS if keys is None else keys)
    newest = Fernet(keys[0])
    scan = SecretScan()
    for model, names in encrypted_fields():
        for row in model._default_manager.order_by().values_list(*names).iterator():
            for name, value in zip(names, row, strict=True):
                if not isinstance(value, Sealed):
                    continue
                scan.total += 1
                where = f"{model._meta.label}.{name}"
                try:
                    newest.decrypt(value.ciphertext.encode())
                    continue
                except InvalidToken:
                    pass
                try:
                    decrypt(value.ciphertext)
                    scan.old_key[where] += 1
                except DecryptionError as exc:
                    scan.unreadable[where] += 1
                    scan.advice = str(exc)
    return scan


def _encryption_keys() -> list[Finding]:
    scan = scan_secrets()
    found = []

    def places(counts: dict[str, int]) -> str:
        return ", ".join(f"{where}: {n}" for where, n in sorted(counts.items()))

    if scan.unreadable:
        n = sum(scan.unreadable.values())
        advice = scan.advice
        found.append(
            Finding(
                Level.ERROR,
                f"{n} stored secret{'s' if n != 1 else ''} cannot be decrypted",
                f"No key in MAILGATE_ENCRYPTION_KEYS reads them ({places(scan.unreadable)}).",
                "Put the key they were written with back into MAILGATE_ENCRYPTION_KEYS (after "
                "the newest), or enter those secrets again. " + advice[:1].upper() + advice[1:],
                "encryption_keys",
                fix_url=reverse("servers:list"),  # where the secrets are typed again
            )
        )
    if scan.old_key:
        n = sum(scan.old_key.values())
        found.append(
            Finding(
                Level.WARNING,
                f"{n} secret{'s' if n != 1 else ''} still encrypted with an older key",
                f"MAILGATE_ENCRYPTION_KEYS has {len(settings.MAILGATE_ENCRYPTION_KEYS)} keys and "
                f"these secrets are not under the newest one yet ({places(scan.old_key)}).",
                "Run `mailgate rotate-keys`, then remove the older keys from "
                "MAILGATE_ENCRYPTION_KEYS.",
                "encryption_keys",
                fix_command=ROTATE_KEYS,
            )
        )
    if not found:
        found.append(
            Finding(
                Level.OK,
                "Secrets readable with the newest key",
                f"{scan.total} stored secret{'s' if scan.total != 1 else ''} checked.",
                check="encryption_keys",
            )
        )
    return found


def needs_action(findings: Iterable[Finding]) -> bool:
    return any(f.needs_action for f in findings)
