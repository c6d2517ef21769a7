"""Fetching: per server a claim in the database, per folder a UID cursor (IMAP) or the UIDL list
(POP3), bounded batches, each committed before the After Fetch action goes to the server.

Order for every batch: fetch (BODY.PEEK / RETR: nothing changes on the server) -> commit the rows
and the cursor -> mark read / move / delete -> record that as done. A kill after the commit leaves
rows whose action is pending; the next fetch applies it first. A kill before leaves the cursor
where it was; the messages are fetched again and stored once.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Generic, NamedTuple, TypeVar, cast

from django.db.models import Q
from django.utils import timezone

from mailgate.conf import parse_int
from mailgate.connections import imap_transport, pop3_transport
from mailgate.inbox.models import (
    FetchState,
    FolderCursor,
    IncomingMessage,
    RemoteAction,
    SkippedUidl,
)
from mailgate.inbox.store import (
    FILE_BYTES,
    Fetched,
    Pack,
    bulk_writes,
    keep,
    parse_pending,
    spool,
    store,
)
from mailgate.providers.replies import diagnose_reply
from mailgate.servers.models import MailServer
from mailgate.transports.base import TransportError
from mailgate.transports.imap import IMAPTransport

log = logging.getLogger("mailgate.inbox")
T = TypeVar("T")

BATCH_MESSAGES = parse_int(
    "MAILGATE_INBOX_BATCH", os.environ.get("MAILGATE_INBOX_BATCH", ""), 200, 1, 100_000
)
BATCH_BYTES = parse_int(
    "MAILGATE_INBOX_BATCH_BYTES",
    os.environ.get("MAILGATE_INBOX_BATCH_BYTES", ""),
    16 * 1024 * 1024,
    1024,
    2**40,
)
SUMMARY_CHUNK = 1000  # UIDs per FETCH of sizes
CHUNK_BYTES = 1024 * 1024  # piece size of a streamed large message
LEASE = timedelta(minutes=5)
FLAG_AFTER_FAILURES = 5  # consecutive failures before the server is flagged
MAX_BACKOFF = timedelta(hours=1)
MAX_ROUNDS = 10_000  # batches per folder and fetch (bounds one fetch)
TIMEOUT_SECONDS = 60.0


class LostClaim(Exception):
    """Another worker took the server over (our lease expired): stop without touching it."""


@dataclass
class FetchReport:
    server: str
    counts: dict[str, int] = field(default_factory=dict)  # folder (POP3: "") -> new messages
    error: str = ""
    diagnosis: str = ""
    skipped: str = ""  # why the server was not fetched (claimed by another worker)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pause_after_store() -> None:
    """Tests kill the process here (between the commit and the server's flags)."""
    pause = os.environ.get("MAILGATE_INBOX_PAUSE_AFTER_STORE")
    if pause:
        time.sleep(float(pause))


# -- the per-server claim ---------------------------------------------------------------------


def holder_gone_here(holder: str) -> bool:
    """True when `holder` names a process of this host that no longer runs."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim(server: MailServer, holder: str, *, due_only: bool) -> bool:
    """Take the server for one fetch (compare-and-swap on its FetchState row)."""
    FetchState.objects.get_or_create(server=server)
    now = timezone.now()
    rows = FetchState.objects.filter(pk=server.pk)
    if due_only:
        rows = rows.filter(Q(next_fetch_at__isnull=True) | Q(next_fetch_at__lte=now))
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now) | Q(claimed_by="")
    if rows.filter(free).update(claimed_by=holder, claimed_until=now + LEASE):
        _renewed[holder] = time.monotonic()
        return True
    state = FetchState.objects.filter(pk=server.pk).first()
    if state is not None and state.claimed_by and holder_gone_here(state.claimed_by):
        taken = rows.filter(claimed_by=state.claimed_by).update(
            claimed_by=holder, claimed_until=now + LEASE
        )
        if taken:
            _renewed[holder] = time.monotonic()
        return bool(taken)
    return False


_renewed: dict[str, float] = {}  # holder -> when its claim was last extended (monotonic)
RENEW_EVERY = 30.0  # seconds; far inside LEASE


def renew(server: MailServer, holder: str) -> None:
    """Extend the claim before the next batch (at most every RENEW_EVERY seconds); raise
    LostClaim when another worker took the server over because our lease ran out."""
    now = time.monotonic()
    if now - _renewed.get(holder, 0.0) < RENEW_EVERY:
        return
    updated = FetchState.objects.filter(pk=server.pk, claimed_by=holder).update(
        claimed_until=timezone.now() + LEASE
    )
    if not updated:
        raise LostClaim(f"the fetch claim on {server.name!r} was taken over")
    _renewed[holder] = now


def claimed_by(server: MailServer) -> str:
    state = FetchState.objects.filter(pk=server.pk).first()
    return state.claimed_by if state else ""


# -- one server -------------------------------------------------------------------------------


def fetch_server(
    server: MailServer, *, holder: str | None = None, due_only: bool = False
) -> FetchReport:
    """Claim, fetch every folder, record the outcome; never raises for a mailbox problem."""
    holder = holder or holder_name()
    report = FetchReport(server.name)
    if not claim(server, holder, due_only=due_only):
        report.skipped = f"being fetched by {claimed_by(server) or 'another worker'}"
        return report
    try:
        with bulk_writes():
            if server.incoming_protocol == "pop3":
                report.counts[""] = _fetch_pop3(server, holder)
            else:
                _fetch_imap(server, holder, report.counts)
    except LostClaim as exc:
        report.skipped = str(exc)
        return report
    except TransportError as exc:
        report.error = str(exc)
        report.diagnosis = exc.diagnosis or _diagnose(server, exc)
    except Exception as exc:  # a bug or an unexpected reply must not stop the other servers
        log.exception("fetching %s failed", server.name)
        report.error = f"{type(exc).__name__}: {exc}"
    _finish(server, holder, report)
    return report


def _diagnose(server: MailServer, exc: TransportError) -> str:
    found = diagnose_reply(server.provider_key, f"{exc.text} {exc}")
    return found.as_text() if found else ""


def _finish(server: MailServer, holder: str, report: FetchReport) -> None:
    _renewed.pop(holder, None)
    now = timezone.now()
    state = FetchState.objects.get(pk=server.pk)
    state.claimed_by, state.claimed_until = "", None
    state.last_fetch_at = now
    state.last_count = report.total
    state.fetched_total += report.total
    if report.ok:
        state.last_success_at = now
        state.last_error = state.diagnosis = ""
        state.failures = 0
        state.flagged = False
        state.next_fetch_at = now + timedelta(seconds=server.poll_interval)
    else:
        state.failures += 1
        state.errors_total += 1
        state.last_error = report.error[:2000]
        state.diagnosis = report.diagnosis
        state.flagged = state.flagged or state.failures >= FLAG_AFTER_FAILURES
        backoff = timedelta(seconds=server.poll_interval) * (2 ** min(state.failures, 10))
        state.next_fetch_at = now + min(backoff, MAX_BACKOFF)
        log.warning(
            "fetching %s failed (%d in a row): %s", server.name, state.failures, report.error
        )
    FetchState.objects.filter(pk=server.pk, claimed_by=holder).update(
        **{
            f: getattr(state, f)
            for f in (
                "claimed_by",
                "claimed_until",
                "last_fetch_at",
                "last_count",
                "fetched_total",
                "last_success_at",
                "last_error",
                "diagnosis",
                "failures",
                "flagged",
                "errors_total",
                "next_fetch_at",
            )
        }
    )


# -- IMAP -------------------------------------------------------------------------------------


def _fetch_imap(server: MailServer, holder: str, counts: dict[str, int]) -> None:
    problems: list[TransportError] = []
    with imap_transport(server, timeout=TIMEOUT_SECONDS) as transport:
        for folder in server.folder_list():
            counts[folder] = _fetch_folder(transport, server, folder, holder, problems)
    if problems:
        # Every new message was stored; the action waits (pending) and is tried again on the
        # next fetch. Reported as this fetch's error, so the card and the dashboard show it.
        raise problems[0]


def _fetch_folder(
    transport: IMAPTransport,
    server: MailServer,
    folder: str,
    holder: str,
    problems: list[TransportError],
) -> int:
    status = transport.open_folder(folder, readonly=server.after_fetch == "keep")
    cursor = FolderCursor.objects.filter(server=server, folder=folder).first()
    stored = 0
    if cursor is None:
        start = 0
        if not server.fetch_existing:
            start = status.uidnext - 1 if status.uidnext else max(transport.uids_after(0) or [0])
        cursor, _ = FolderCursor.objects.get_or_create(
            server=server,
            folder=folder,
            defaults={"uidvalidity": status.uidvalidity, "last_uid": max(start, 0)},
        )
    if cursor.uidvalidity != status.uidvalidity:
        stored += _resync(transport, server, cursor, status.uidvalidity, holder)
    _finish_pending(transport, server, folder, cursor.uidvalidity, problems)
    uids = transport.uids_after(cursor.last_uid)
    stored += _take(transport, server, cursor, uids, holder, problems)
    return stored


def _take(
    transport: IMAPTransport,
    server: MailServer,
    cursor: FolderCursor,
    uids: list[int],
    holder: str,
    problems: list[TransportError],
) -> int:
    """Fetch, store and then act on `uids` (ascending) in bounded batches.

    Three threads work on consecutive batches: one downloads them in order (BODY.PEEK: nothing
    changes on the server), one appends each to the pack and syncs it, and this one commits the
    rows and acts on the server. Each hands its batches to the next one at a time."""
    stored = 0
    keep_all = server.after_fetch == "keep"
    batches = _batches(_sized(transport, cursor, uids))
    connection = threading.Lock()  # one IMAP command at a time
    downloads = _downloads(transport, cursor, batches, connection, ahead=keep_all)
    # Leaving the blocks (an error included) stops the helpers and waits for them.
    with (
        Pack() as pack,
        _Handover(downloads, "mailgate-fetch") as downloaded,
        _Handover(map(pack.add, downloaded), "mailgate-pack") as packed,
    ):
        for items in packed:
            renew(server, holder)
            rows = store(server, items, cursor=cursor, remote_pending=not keep_all)
            stored += len(rows)
            if rows and not keep_all:
                _pause_after_store()
                with connection:
                    acted = _act(transport, server, [r.uid for r in rows if r.uid], problems)
                if acted:
                    IncomingMessage.objects.filter(seq__in=[r.seq for r in rows]).update(
                        remote_action=RemoteAction.DONE
                    )
    return stored


def _downloads(
    transport: IMAPTransport,
    cursor: FolderCursor,
    batches: list[list[Sized]],
    connection: threading.Lock,
    *,
    ahead: bool,
) -> Iterator[list[Fetched]]:
    """Each batch's messages, downloaded in order, each command under the `connection` lock
    (the After Fetch action takes it between batches). With `ahead` (After Fetch Keep: nothing
    else uses the connection), the next batch's FETCH is sent as soon as one is read, so the
    server streams it while this batch is handed over."""
    sent: bytes | None = None  # the tag of the FETCH already sent for this batch
    for i, batch in enumerate(batches):
        with connection:
            if sent is not None:
                items, sent = _items(cursor, batch, transport.finish_fetch(sent)), None
            else:
                items = _download(transport, cursor, batch)
            following = batches[i + 1] if i + 1 < len(batches) else None
            if ahead and following is not None and not _streamed(following):
                sent = transport.start_fetch([s.uid for s in following])
        yield items


_DONE = object()


class _Handover(Generic[T]):
    """Runs an iterator in a thread of its own and hands its items over one at a time (at most
    one waits); iterating yields them in order and raises what the iterator raised. Leaving the
    block stops the thread after its current item and waits for it."""

    def __init__(self, source: Iterator[T], name: str) -> None:
        self._source = source
        self._ready: queue.Queue[object] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, who raises it
            self._put(exc)
            return
        self._put(_DONE)

    def _put(self, value: object) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            value = self._ready.get()
            if value is _DONE:
                return
            if isinstance(value, BaseException):
                raise value
            yield cast(T, value)

    def __enter__(self) -> _Handover[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Sized(NamedTuple):
    """A UID and the size batching counts for it."""

    uid: int
    size: int


def _sized(transport: IMAPTransport, cursor: FolderCursor, uids: list[int]) -> list[Sized]:
    """`uids` with the sizes that batching needs. One `UID SEARCH ... LARGER` names the messages
    above a batch's fair share (BATCH_BYTES / BATCH_MESSAGES, at most FILE_BYTES); only their sizes are fetched, the
    others are counted at that share, so a full batch of them stays within BATCH_BYTES. A server
    that refuses LARGER is asked for every size."""
    share = max(min(BATCH_BYTES // BATCH_MESSAGES, FILE_BYTES), 1)
    larger = transport.uids_larger(cursor.last_uid, share) if uids else []
    if larger == []:  # the usual case: nothing above the share, no size to ask
        return list(map(Sized, uids, itertools.repeat(share)))
    wanted = set(uids)
    asked = uids if larger is None else [u for u in larger if u in wanted]
    sizes = dict.fromkeys(uids, share) if larger is not None else {}
    vanished = set(asked)
    for start in range(0, len(asked), SUMMARY_CHUNK):
        found = transport.sizes(asked[start : start + SUMMARY_CHUNK])
        sizes.update(found)
        vanished.difference_update(found)
    return [Sized(u, sizes[u]) for u in uids if u in sizes and u not in vanished]


def _batches(summaries: list[Sized]) -> list[list[Sized]]:
    """Groups of at most BATCH_MESSAGES / BATCH_BYTES; a message above FILE_BYTES goes alone."""
    batches: list[list[Sized]] = []
    current: list[Sized] = []
    size = 0
    for summary in summaries:
        if summary.size > FILE_BYTES:
            if current:
                batches.append(current)
                current, size = [], 0
            batches.append([summary])
            continue
        if current and (len(current) >= BATCH_MESSAGES or size + summary.size > BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(summary)
        size += summary.size
    if current:
        batches.append(current)
    return batches


def _download(transport: IMAPTransport, cursor: FolderCursor, batch: list[Sized]) -> list[Fetched]:
    where = {"folder": cursor.folder, "uidvalidity": cursor.uidvalidity}
    if _streamed(batch):
        summary = batch[0]
        with spool() as out:
            written = transport.fetch_to_file(summary.uid, summary.size, out, chunk=CHUNK_BYTES)
        if not written:
            out.path.unlink(missing_ok=True)
            return []
        return [keep(out, uid=summary.uid, **where)]
    return _items(cursor, batch, transport.fetch_messages([s.uid for s in batch]))


def _streamed(batch: list[Sized]) -> bool:
    """A batch of one message above FILE_BYTES, streamed to a file of its own in pieces."""
    return len(batch) == 1 and batch[0].size > FILE_BYTES


def _items(cursor: FolderCursor, batch: list[Sized], bodies: dict[int, bytes]) -> list[Fetched]:
    where = {"folder": cursor.folder, "uidvalidity": cursor.uidvalidity}
    return [Fetched.unhashed(bodies[s.uid], uid=s.uid, **where) for s in batch if s.uid in bodies]


def _act(
    transport: IMAPTransport, server: MailServer, uids: list[int], problems: list[TransportError]
) -> bool:
    """The After Fetch action for stored messages (the folder is selected read-write); False when
    it could not be done (the problem is added to `problems`, the messages stay pending)."""
    if not uids:
        return True
    if problems:
        return False  # the action already failed in this fetch: tried again on the next one
    if server.after_fetch == "mark_read":
        transport.mark_seen(uids)
    elif server.after_fetch == "move":
        try:
            _move(transport, server.move_to_folder, uids)
        except AfterFetchFailed as exc:
            log.warning("%s: %s", server.name, exc)
            problems.append(exc)
            return False
    elif server.after_fetch == "delete":
        transport.delete(uids)
    return True


class AfterFetchFailed(TransportError):
    """The After Fetch action cannot be done (a Move to Folder that does not exist and cannot
    be created): the messages are stored and stay in place until it is fixed."""


def _move(transport: IMAPTransport, folder: str, uids: list[int]) -> None:
    """MOVE to `folder`, creating it first when the server says it does not exist."""
    try:
        transport.move(uids, folder)
        return
    except TransportError as exc:
        if transport.folder_exists(folder):
            raise
        first = exc
    try:
        transport.create_folder(folder)
    except TransportError as exc:
        raise AfterFetchFailed(
            f"After Fetch: cannot move messages to folder {folder!r}: it does not exist on the "
            f"server and creating it was refused ({exc.text or first.text or exc})",
            step="move",
            reply=exc.reply,
            diagnosis=(
                f"The fetched messages are stored and stay in the mailbox's folder until this is "
                f"fixed; nothing is fetched twice. Fix: create the folder {folder!r} in the "
                f"mailbox (or pick an existing one under Move to Folder in the server's Incoming "
                f"Mail settings); the next fetch moves the waiting messages."
            ),
        ) from None
    log.info("created folder %r for After Fetch = Move to folder", folder)
    transport.move(uids, folder)


def _finish_pending(
    transport: IMAPTransport,
    server: MailServer,
    folder: str,
    uidvalidity: int,
    problems: list[TransportError],
) -> None:
    """Apply the After Fetch action a previous fetch committed but did not get to do."""
    pending = IncomingMessage.objects.filter(
        server=server, folder=folder, remote_action=RemoteAction.PENDING
    )
    if server.after_fetch == "keep":
        if pending.exists():  # a read first: the write (a lock and a sync on SQLite) is rare
            pending.update(remote_action=RemoteAction.NONE)
        return
    uids = list(pending.filter(uidvalidity=uidvalidity).values_list("uid", flat=True))
    for start in range(0, len(uids), BATCH_MESSAGES):
        chunk = [u for u in uids[start : start + BATCH_MESSAGES] if u]
        if not _act(transport, server, chunk, problems):
            return  # they stay pending for the next fetch
        pending.filter(uidvalidity=uidvalidity, uid__in=chunk).update(
            remote_action=RemoteAction.DONE
        )
    pending.filter(uidvalidity=uidvalidity).update(remote_action=RemoteAction.DONE)
    # Rows of an older UIDVALIDITY that a resync could not match: their UIDs mean nothing now.
    pending.update(remote_action=RemoteAction.NONE)


def _resync(
    transport: IMAPTransport,
    server: MailServer,
    cursor: FolderCursor,
    uidvalidity: int,
    holder: str,
) -> int:
    """UIDVALIDITY changed: the UIDs we hold mean nothing. Every message now in the folder is
    matched against what is stored (by its new UID from an interrupted resync, by Message-ID and
    size, else by the SHA-256 of its bytes); only unmatched ones are stored, the cursor moves last.
    """
    log.warning(
        "%s: UIDVALIDITY of %s changed (%s -> %s); matching stored messages",
        server.name,
        cursor.folder,
        cursor.uidvalidity,
        uidvalidity,
    )
    uids = transport.uids_after(0)
    parse_pending(server=server)  # the Message-IDs of what is stored
    stored_rows = IncomingMessage.objects.filter(server=server, folder=cursor.folder)
    by_new_uid = set(stored_rows.filter(uidvalidity=uidvalidity).values_list("uid", flat=True))
    by_id: dict[tuple[str, int], int] = {}
    hashes = set()
    for pk, message_id, size, sha in stored_rows.values_list("pk", "message_id", "size", "sha256"):
        if message_id:
            by_id[(message_id, size)] = pk
        hashes.add(sha)
    since = FetchState.objects.get(pk=server.pk).set_up_at
    candidates: list[int] = []
    for start in range(0, len(uids), SUMMARY_CHUNK):
        summaries = transport.summaries(uids[start : start + SUMMARY_CHUNK])
        for uid, summary in sorted(summaries.items()):
            if uid in by_new_uid:
                continue
            match = by_id.get((summary.message_id, summary.size)) if summary.message_id else None
            if match is not None:
                # The same message under its new UID (its pending action applies to that UID).
                IncomingMessage.objects.filter(pk=match).update(uidvalidity=uidvalidity, uid=uid)
                continue
            arrived = summary.internal_date
            if not server.fetch_existing and arrived is not None and _before(arrived, since):
                continue
            candidates.append(uid)
    highest = max(uids, default=0)
    work = FolderCursor(pk=cursor.pk, server=server, folder=cursor.folder, uidvalidity=uidvalidity)
    work.last_uid = 0
    stored = 0
    for start in range(0, len(candidates), BATCH_MESSAGES):
        renew(server, holder)
        bodies = transport.fetch_messages(candidates[start : start + BATCH_MESSAGES])
        items = [
            Fetched.from_bytes(bodies[u], folder=cursor.folder, uidvalidity=uidvalidity, uid=u)
            for u in sorted(bodies)
            if u not in by_new_uid
        ]
        fresh = [i for i in items if i.sha256 not in hashes]
        stored += len(store(server, fresh, remote_pending=server.after_fetch != "keep"))
    FolderCursor.objects.filter(pk=cursor.pk).update(
        uidvalidity=uidvalidity, last_uid=highest, resynced_at=timezone.now()
    )
    cursor.uidvalidity, cursor.last_uid = uidvalidity, highest
    return stored


def _before(internal_date: object, since: object) -> bool:
    import datetime as dt

    if not isinstance(internal_date, dt.datetime) or not isinstance(since, dt.datetime):
        return False
    if internal_date.tzinfo is None:
        internal_date = internal_date.replace(tzinfo=dt.UTC)
    return internal_date < since - timedelta(minutes=1)


# -- POP3 -------------------------------------------------------------------------------------


def _fetch_pop3(server: MailServer, holder: str) -> int:
    transport = pop3_transport(server, timeout=TIMEOUT_SECONDS)
    with transport:
        ids = transport.unique_ids()
        # A QUIT that went out after DELE but before the outcome was recorded: those are gone.
        IncomingMessage.objects.filter(server=server, remote_action=RemoteAction.PENDING).exclude(
            uidl__in=list(ids.values())
        ).update(remote_action=RemoteAction.DONE)
        known = set(
            IncomingMessage.objects.filter(server=server)
            .exclude(uidl="")
            .values_list("uidl", flat=True)
        )
        state = FetchState.objects.get(pk=server.pk)
        first_time = not state.last_success_at and not known
        if (
            first_time
            and not server.fetch_existing
            and not SkippedUidl.objects.filter(server=server).exists()
        ):
            # Fetch Existing Mail off: what is in the maildrop now is not ours to take.
            SkippedUidl.objects.bulk_create(
                [SkippedUidl(server=server, uidl=u) for u in ids.values()], ignore_conflicts=True
            )
        skipped = set(SkippedUidl.objects.filter(server=server).values_list("uidl", flat=True))
        sizes = transport.sizes()
        delete = server.after_fetch == "delete"
        to_delete = [n for n, u in ids.items() if u in known] if delete else []
        stored = 0
        for number, uidl in sorted(ids.items())[: MAX_ROUNDS * BATCH_MESSAGES]:
            if uidl in known or uidl in skipped:
                continue
            renew(server, holder)
            if sizes.get(number, FILE_BYTES + 1) <= FILE_BYTES:
                buffer = io.BytesIO()
                transport.retrieve(number, buffer)
                item = Fetched.from_bytes(buffer.getvalue(), uidl=uidl)
            else:
                with spool() as out:
                    transport.retrieve(number, out)
                item = keep(out, uidl=uidl)
            stored += len(store(server, [item], remote_pending=delete))
            if delete:
                to_delete.append(number)
        if delete and to_delete:
            _pause_after_store()
            for number in to_delete:
                transport.delete(number)
            transport.commit()
            IncomingMessage.objects.filter(
                server=server, remote_action=RemoteAction.PENDING
            ).update(remote_action=RemoteAction.DONE)
        if server.after_fetch != "delete":
            IncomingMessage.objects.filter(
                server=server, remote_action=RemoteAction.PENDING
            ).update(remote_action=RemoteAction.NONE)
    return stored


# -- the worker step --------------------------------------------------------------------------


def incoming_servers() -> list[MailServer]:
    return list(MailServer.objects.filter(active=True).exclude(incoming_protocol="none"))


def fetch_all(
    *,
    servers: list[MailServer] | None = None,
    due_only: bool = False,
    stop: Callable[[], bool] | None = None,
) -> list[FetchReport]:
    reports = []
    for server in servers if servers is not None else incoming_servers():
        if stop is not None and stop():
            break
        reports.append(fetch_server(server, due_only=due_only))
    return reports


def due_servers() -> list[MailServer]:
    """Servers with Incoming Mail whose Poll Interval has passed (a read: most cycles find none)."""
    now = timezone.now()
    not_due = set(
        FetchState.objects.filter(next_fetch_at__gt=now).values_list("server_id", flat=True)
    )
    return [s for s in incoming_servers() if s.pk not in not_due]


def fetch_step() -> bool:
    """Worker step: fetch each server whose Poll Interval has passed; True when mail came in."""
    from mailgate.worker import current_stop_event

    servers = due_servers()
    if not servers:
        return False
    stop = current_stop_event()
    reports = fetch_all(servers=servers, due_only=True, stop=stop.is_set)
    return any(r.total for r in reports)
