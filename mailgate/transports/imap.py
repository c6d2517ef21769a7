"""IMAP (IMAPClient): implicit TLS / STARTTLS / plain, XOAUTH2 for OAuth mailboxes, PLAIN/LOGIN, client certificates.

The steps (connect, starttls, authenticate, select_folder) are methods so the connection test can
run them one by one. Certificate verification is always on (system store + SSL_CERT_FILE).
"""

from __future__ import annotations

import imaplib
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import imapclient
from imapclient import exceptions as imap_errors

from mailgate.transports.base import (
    IncomingTransport,
    Reply,
    Sink,
    TransportError,
    tls_context,
)
from mailgate.transports.credentials import (
    BearerToken,
    Credential,
    Endpoint,
    Password,
    bearer_response,
)

T = TypeVar("T")
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")


def _text(exc: BaseException) -> str:
    """An imaplib/IMAPClient error as the server's reply text (without the bytes repr)."""
    text = str(exc)
    if text.startswith(("b'", 'b"')) and text[-1:] in ("'", '"'):
        text = text[2:-1]
    return text


class IMAPTransport(IncomingTransport[imapclient.IMAPClient]):
    """One IMAP connection to a server's incoming mailbox."""

    name = "imap"
    implicit_tls_port = 993
    plain_port = 143

    def __init__(
        self,
        endpoint: Endpoint,
        credential: Credential | None = None,
        *,
        timeout: float = 30.0,
        folder: str = "INBOX",
    ) -> None:
        super().__init__(endpoint, credential, timeout=timeout)
        self.folder = folder

    def _goodbye(
        self, handle: imapclient.IMAPClient
    ) -> tuple[Any, Any, tuple[type[Exception], ...]]:
        return handle.logout, handle.shutdown, (imap_errors.IMAPClientError,)

    def connect(self) -> Reply:
        """Open the connection (TLS first for implicit TLS) and read the greeting."""
        self.check_endpoint()
        implicit = self.endpoint.security == "ssl"
        try:
            client = imapclient.IMAPClient(
                self.endpoint.host,
                port=self.port,
                ssl=implicit,
                ssl_context=tls_context(self.credential) if implicit else None,
                timeout=self.timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise self.untrusted(exc) from None
        except ssl.SSLError as exc:
            raise TransportError(f"TLS with {self.address} failed: {exc}", step="tls") from None
        except (TimeoutError, OSError, imap_errors.IMAPClientError) as exc:
            raise TransportError(
                f"cannot connect to {self.address}: {_text(exc)}", step="connect"
            ) from None
        self.connection = client
        return Reply.parse(None, client.welcome or b"")

    def starttls(self) -> Reply:
        """Upgrade with STARTTLS, verifying the certificate and host name."""
        client = self._require()
        try:
            if b"STARTTLS" not in client.capabilities():
                raise TransportError(
                    f"{self.address} does not offer STARTTLS: choose another Incoming Security",
                    permanent=True,
                    step="tls",
                )
            text = client.starttls(tls_context(self.credential))
        except ssl.SSLCertVerificationError as exc:
            raise self.untrusted(exc) from None
        except (ssl.SSLError, OSError, imap_errors.IMAPClientError) as exc:
            raise TransportError(
                f"STARTTLS with {self.address} failed: {_text(exc)}", step="tls"
            ) from None
        return Reply.parse(None, text or b"")

    def _auth_bearer(self, credential: BearerToken) -> Reply:
        client = self._require()
        capabilities = client.capabilities()
        mechanism = (
            "OAUTHBEARER"
            if b"AUTH=XOAUTH2" not in capabilities and b"AUTH=OAUTHBEARER" in capabilities
            else "XOAUTH2"
        )
        response = bearer_response(mechanism, credential.username, credential.get_token())
        answered: list[bool] = []

        def answer(challenge: bytes) -> str:
            # A failure comes as a challenge carrying base64 JSON; it must be answered with an
            # empty response to receive the final NO.
            # Reference: https://developers.google.com/gmail/imap/xoauth2-protocol#error_response
            if answered:
                return ""
            answered.append(True)
            return response

        return self._login(lambda: client.sasl_login(mechanism, answer))

    def _auth_password(self, credential: Password) -> Reply:
        client = self._require()
        username, password = credential.username, credential.password
        if b"LOGINDISABLED" in client.capabilities():
            return self._login(lambda: client.plain_login(username, password))
        return self._login(lambda: client.login(username, password))

    def _login(self, call: Any) -> Reply:
        try:
            text = call()
        except imap_errors.LoginError as exc:
            reply = Reply.parse(None, _text(exc))
            raise TransportError(
                f"authentication failed: {reply}", permanent=True, step="auth", reply=reply
            ) from None
        except (OSError, ssl.SSLError, imap_errors.IMAPClientError) as exc:
            raise TransportError(
                f"authentication with {self.address} failed: {_text(exc)}", step="auth"
            ) from None
        if isinstance(text, list | tuple):
            text = b" ".join(t if isinstance(t, bytes) else str(t).encode() for t in text)
        return Reply.parse(None, text or b"OK")

    def select_folder(self, folder: str | None = None, *, readonly: bool = True) -> Reply:
        """SELECT (read-only by default) the configured folder; the reply names its message count."""
        client = self._require()
        name = folder or self.folder or "INBOX"
        try:
            info = client.select_folder(name, readonly=readonly)
        except (imap_errors.IMAPClientError, OSError, ssl.SSLError) as exc:
            reply = Reply.parse(None, _text(exc))
            raise TransportError(
                f"cannot select folder {name!r}: {reply}",
                permanent=True,
                step="folder",
                reply=reply,
            ) from None
        return Reply.parse(None, f"{name}: {info.get(b'EXISTS', 0)} messages")

    # -- fetching ----------------------------------------------------------------------------

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """Run one IMAP command; a failure becomes a TransportError naming the command."""
        self._require()
        try:
            return call()
        except imap_errors.IMAPClientAbortError as exc:
            raise TransportError(f"{what}: connection lost: {_text(exc)}", step=what) from None
        except (imap_errors.IMAPClientError, OSError, ssl.SSLError) as exc:
            reply = Reply.parse(None, _text(exc))
            raise TransportError(f"{what} failed: {reply}", step=what, reply=reply) from None

    def open_folder(self, folder: str, *, readonly: bool) -> FolderStatus:
        """SELECT (or EXAMINE when `readonly`) a folder: its UIDVALIDITY, UIDNEXT and size."""
        client = self._require()
        try:
            info = client.select_folder(folder, readonly=readonly)
        except (imap_errors.IMAPClientError, OSError, ssl.SSLError) as exc:
            reply = Reply.parse(None, _text(exc))
            raise TransportError(
                f"cannot open folder {folder!r}: {reply}", step="folder", reply=reply
            ) from None
        return FolderStatus(
            folder,
            int(info.get(b"UIDVALIDITY", 0)),
            int(info.get(b"UIDNEXT", 0)),
            int(info.get(b"EXISTS", 0)),
        )

    def uids_after(self, last_uid: int) -> list[int]:
        """UID SEARCH for the UIDs above `last_uid`, ascending ("n:*" always names the last
        message, even below n, so it is filtered)."""
        found = self._call("search", partial(self._uid_search, f"UID {last_uid + 1}:*"))
        return [u for u in found if u > last_uid]

    def _uid_search(self, criteria: str) -> list[int]:
        """`UID SEARCH <criteria>` through imaplib directly (IMAPClient parses a reply of many
        thousand numbers in Python, one token at a time); the UIDs found, ascending."""
        raw: Any = self._require()._imap
        level, raw.debug = raw.debug, 0
        try:
            typ, data = raw.uid("SEARCH", criteria)
        finally:
            raw.debug = level
        if typ != "OK":
            raise imap_errors.IMAPClientError(f"UID SEARCH failed: {data!r}")
        return sorted(int(u) for line in data if line for u in bytes(line).split())

    def uids_larger(self, last_uid: int, size: int) -> list[int] | None:
        """UID SEARCH for the UIDs above `last_uid` whose RFC822.SIZE is larger than `size`
        (RFC 3501 LARGER), ascending; None when the server refuses the search (the caller then
        asks for every size)."""
        try:
            found = self._call(
                "search", partial(self._uid_search, f"UID {last_uid + 1}:* LARGER {size}")
            )
        except TransportError as exc:
            if exc.step == "search" and "connection lost" not in str(exc):
                return None
            raise
        return [u for u in found if u > last_uid]

    def summaries(self, uids: list[int]) -> dict[int, MessageSummary]:
        """Size, INTERNALDATE and Message-ID of each UID (for batching and for matching messages
        whose UIDs changed)."""
        client = self._require()
        wanted = ["RFC822.SIZE", "INTERNALDATE", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]
        answer = self._call("fetch", lambda: client.fetch(uids, wanted))
        out = {}
        for uid, data in answer.items():
            header = data.get(b"BODY[HEADER.FIELDS (MESSAGE-ID)]") or b""
            message_id = header.partition(b":")[2].strip().decode("utf-8", "replace")
            out[int(uid)] = MessageSummary(
                int(uid), int(data.get(b"RFC822.SIZE", 0)), data.get(b"INTERNALDATE"), message_id
            )
        return out

    def sizes(self, uids: list[int]) -> dict[int, int]:
        """UID FETCH RFC822.SIZE: the size of each UID (vanished UIDs are absent)."""
        out: dict[int, int] = {}
        for head, _ in self._uid_fetch(uids, "(RFC822.SIZE)"):
            found = _SIZE.search(head)
            uid = _UID.search(head)
            if found and uid:
                out[int(uid.group(1))] = int(found.group(1))
        return out

    def fetch_messages(self, uids: list[int]) -> dict[int, bytes]:
        """UID FETCH BODY.PEEK[] (no flag changes) for a batch of UIDs; vanished UIDs are absent."""
        return self.finish_fetch(self.start_fetch(uids))

    def start_fetch(self, uids: list[int]) -> bytes:
        """Send `UID FETCH <uids> (BODY.PEEK[])` and return its tag without reading the answer,
        so the server streams it while the caller works; finish_fetch reads it. Commands are
        answered in order (RFC 3501 5.5), so several may be outstanding."""
        client = self._require()
        raw: Any = client._imap  # the imaplib connection IMAPClient wraps
        message_set = ",".join(str(u) for u in uids)

        def send() -> bytes:
            level, raw.debug = raw.debug, 0  # no repr of the command for imaplib's debug log
            try:
                tag: bytes = raw._command("UID", "FETCH", message_set, "(BODY.PEEK[])")
            finally:
                raw.debug = level
            return tag

        return self._call("fetch", send)

    def finish_fetch(self, tag: bytes) -> dict[int, bytes]:
        """Read the answer to a start_fetch: each message's bytes by UID (vanished UIDs are
        absent). The responses are read in large blocks and split here: imaplib's reader works
        line by line in Python, which costs more than the transfer for many small messages."""
        raw: Any = self._require()._imap
        return self._call("fetch", lambda: _read_fetch(raw, tag))

    def _uid_fetch(self, uids: list[int], items: str) -> list[tuple[bytes, bytes | None]]:
        """UID FETCH through imaplib directly (IMAPClient's response parser is pure Python and
        costs more than the transfer for many small messages); each response's text and literal."""
        client = self._require()
        raw: Any = client._imap  # the imaplib connection IMAPClient wraps
        message_set = ",".join(str(u) for u in uids)

        def fetch() -> list[Any]:
            # IMAPClient runs imaplib at debug level 5, where imaplib formats the repr of every
            # response, message bodies included, for its logger: more CPU than the transfer.
            level, raw.debug = raw.debug, 0
            try:
                typ, data = raw.uid("FETCH", message_set, items)
            finally:
                raw.debug = level
            if typ != "OK":
                raise imap_errors.IMAPClientError(f"UID FETCH failed: {data!r}")
            return list(data or [])

        out: list[tuple[bytes, bytes | None]] = []
        for part in self._call("fetch", fetch):
            if isinstance(part, tuple):
                out.append((part[0], part[1]))
            elif isinstance(part, bytes) and part != b")":
                # A response without a literal ("1 (UID 5 RFC822.SIZE 10)"), or the tail of one
                # with a literal (" UID 5)" when the server names the UID after the body).
                if out and out[-1][1] is not None and not _UID.search(out[-1][0]):
                    head, literal = out[-1]
                    out[-1] = (head + part, literal)
                else:
                    out.append((part, None))
        return out

    def fetch_to_file(self, uid: int, size: int, out: Sink, *, chunk: int) -> int:
        """Stream one large message into `out` with partial fetches of `chunk` bytes each, so it is
        never held in memory whole; return the number of bytes written (0: the UID vanished)."""
        client = self._require()
        written = 0
        for _ in range(size // chunk + 2):
            answer = self._call(
                "fetch", partial(client.fetch, [uid], [f"BODY.PEEK[]<{written}.{chunk}>"])
            )
            data = answer.get(uid, {}).get(f"BODY[]<{written}>".encode())
            if not data:
                return written
            out.write(data)
            written += len(data)
            if len(data) < chunk:
                return written
        return written

    def mark_seen(self, uids: list[int]) -> None:
        client = self._require()
        self._call("store", lambda: client.add_flags(uids, [imapclient.SEEN], silent=True))

    def move(self, uids: list[int], folder: str) -> None:
        """MOVE, or COPY + \\Deleted + (UID) EXPUNGE where MOVE is not offered."""
        client = self._require()
        if client.has_capability("MOVE"):
            self._call("move", lambda: client.move(uids, folder))
            return
        self._call("copy", lambda: client.copy(uids, folder))
        self.delete(uids)

    def folder_exists(self, folder: str) -> bool:
        client = self._require()
        return bool(self._call("list", lambda: client.folder_exists(folder)))

    def create_folder(self, folder: str) -> None:
        client = self._require()
        self._call("create", lambda: client.create_folder(folder))

    def delete(self, uids: list[int]) -> None:
        """\\Deleted + UID EXPUNGE (UIDPLUS); plain EXPUNGE only where UIDPLUS is missing."""
        client = self._require()
        self._call("store", lambda: client.add_flags(uids, [imapclient.DELETED], silent=True))
        if client.has_capability("UIDPLUS"):
            self._call("expunge", lambda: client.uid_expunge(uids))
        else:
            self._call("expunge", lambda: client.expunge())

    def idle_wait(self, seconds: float) -> bool:
        """IDLE up to `seconds`; True when the server announced a change (new mail)."""
        client = self._require()

        def wait() -> bool:
            pending: dict[str, Any] = client._imap.untagged_responses  # imaplib's
            pending.pop("EXISTS", None)
            client.idle()
            # New mail announced between two IDLE rounds arrives before IDLE's continuation and
            # lands in imaplib's untagged responses, not in idle_check's.
            early = bool(pending.pop("EXISTS", None))
            try:
                responses = [] if early else client.idle_check(timeout=seconds)
            finally:
                _text, late = client.idle_done()
            return early or any(
                b"EXISTS" in item for item in [*responses, *late] if isinstance(item, tuple)
            )

        return self._call("idle", wait)


READ_BLOCK = 256 * 1024  # bytes asked of the connection per read of a FETCH answer
_LITERAL = re.compile(rb"\{(\d+)\}$")


def _read_fetch(raw: Any, tag: bytes) -> dict[int, bytes]:
    """Read responses off imaplib's buffered reader until the tagged completion of `tag`;
    return the literal of each `* n FETCH (... UID u ... BODY[] {size} ...)` by UID. Other
    untagged responses (EXISTS, EXPUNGE, flags changed by another client) are skipped."""
    reader = raw.file
    buf = bytearray()
    pos = 0
    out: dict[int, bytes] = {}
    tagged = tag + b" "

    def fill() -> None:
        nonlocal buf, pos
        if pos > READ_BLOCK:  # drop what was consumed (rarely more than one block to move)
            del buf[:pos]
            pos = 0
        block = reader.read1(READ_BLOCK)
        if not block:
            raise imaplib.IMAP4.abort("the server closed the connection during FETCH")
        buf += block

    def line() -> bytes:
        nonlocal pos
        start = pos
        end = buf.find(b"\r\n", start)
        while end < 0:
            scanned = len(buf) - pos
            fill()
            end = buf.find(b"\r\n", pos + max(scanned - 1, 0))
        text = bytes(buf[pos:end])
        pos = end + 2
        return text

    while True:
        text = line()
        if text.startswith(tagged):
            raw.tagged_commands.pop(tag, None)
            if pos < len(buf):  # read past the answer (unsolicited data): imaplib reads it next
                own = reader.reader if isinstance(reader, _Unread) else reader
                raw.file = _Unread(raw, bytes(buf[pos:]), own)
            status, _, rest = text[len(tagged) :].partition(b" ")
            if status != b"OK":
                raise imaplib.IMAP4.error(f"UID FETCH failed: {status.decode()} {rest.decode()}")
            return out
        if text.startswith(b"* BYE"):
            raise imaplib.IMAP4.abort(text.decode("utf-8", "replace"))
        body: bytes | None = None
        whole = text
        found = _LITERAL.search(text)
        while found is not None:  # the response goes on after each literal
            size = int(found.group(1))
            while len(buf) - pos < size:
                fill()
            literal = bytes(memoryview(buf)[pos : pos + size])
            pos += size
            if text[: found.start()].rstrip().endswith(b"BODY[]"):
                body = literal
            text = line()
            whole += b" " + text
            found = _LITERAL.search(text)
        if body is not None and whole.startswith(b"* "):
            uid = _UID.search(whole)
            if uid:
                out[int(uid.group(1))] = body


class _Unread:
    """imaplib's reader with bytes that _read_fetch read past its answer put back in front; once
    they are consumed the connection's own reader is put back."""

    def __init__(self, raw: Any, data: bytes, reader: Any) -> None:
        self.raw, self.data, self.reader = raw, data, reader

    def _take(self, size: int) -> bytes:
        taken, self.data = self.data[:size], self.data[size:]
        if not self.data:
            self.raw.file = self.reader
        return taken

    def read1(self, size: int = -1) -> bytes:
        if not self.data:
            return bytes(self.reader.read1(size))
        return self._take(len(self.data) if size < 0 else size)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return self._take(len(self.data)) + self.reader.read()
        taken = self._take(size)
        return taken + self.reader.read(size - len(taken)) if len(taken) < size else taken

    def readline(self, limit: int = -1) -> bytes:
        end = self.data.find(b"\n")
        if end >= 0 and (limit < 0 or end < limit):
            return self._take(end + 1)
        if 0 <= limit <= len(self.data):
            return self._take(limit)
        taken = self._take(len(self.data))
        return taken + self.reader.readline(-1 if limit < 0 else limit - len(taken))

    def close(self) -> None:
        self.reader.close()


@dataclass(frozen=True)
class FolderStatus:
    name: str
    uidvalidity: int
    uidnext: int
    exists: int


@dataclass(frozen=True)
class MessageSummary:
    uid: int
    size: int
    internal_date: Any
    message_id: str
