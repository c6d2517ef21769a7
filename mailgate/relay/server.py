"""The relay's SMTP listeners on aiosmtpd, served by one event loop in a thread of their own.

aiosmtpd reads each command and answers in order, so pipelined commands (RFC 2920) are served as
they come; BDAT (RFC 3030 CHUNKING), which aiosmtpd does not implement, is added here. Database
work runs in a thread pool (Django's ORM is blocking), and a message is answered 250 only once
its row is committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AnyStr, TypeVar

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from mailgate.outbox.compose import InvalidMessage, parse_mailbox
from mailgate.relay import submission
from mailgate.relay.submission import Client, Refused

log = logging.getLogger("mailgate.relay")
T = TypeVar("T")

# Client threads that may wait on the database at once.
DATABASE_THREADS = 8
# Seconds a client may stay silent before the relay hangs up (RFC 5321 4.5.3.2 asks for minutes).
IDLE_TIMEOUT = 300
# Seconds a connection reuses a sender's MAIL FROM check (key active, From Filter / Send As) without
# asking the database: the message is still counted, its key checked and its From routed when it is
# queued, in the one database job a message then needs.
SENDER_CHECK_SECONDS = 10.0
# Extensions aiosmtpd does not list itself.
EXTRA_EXTENSIONS = ["PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"]
# RFC 6531 section 3.4: an address that is not ASCII only in a transaction that asked for SMTPUTF8.
NEEDS_SMTPUTF8 = (
    "553 5.6.7 An address whose local part is not ASCII needs the SMTPUTF8 parameter on "
    "MAIL FROM (RFC 6531): MAIL FROM:<address> SMTPUTF8"
)
# The longest line RFC 5321 4.5.3.1.6 allows in a message, with its CRLF.
MAX_LINE = 1000
# What the connection's reader holds before it looks for the end of the data (commands are still
# checked against aiosmtpd's own limits); aiosmtpd's 1,001 bytes paused the socket every 2 KB.
READ_LIMIT = 256 * 1024
# A path of MAIL FROM or RCPT TO in its common form, "<local@domain>" with both parts dot-atoms of
# ASCII atext (RFC 5322 3.2.3), and what follows the ">": aiosmtpd reads it as this, through the
# email package's header parser (and a class it defines at each call), for a tenth of the event
# loop's time per message. Any other form still goes through aiosmtpd.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
SIMPLE_PATH = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*)>")
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid: the username is the API key's name and the password the key (scope send)"


class _Session(Session):
    """aiosmtpd's session, whose login_data aiosmtpd itself sets at every login and then logs a
    warning that it is deprecated (a log record made, and to be filtered out, per login). The
    relay never reads it: here it is a plain attribute."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


def is_loopback(peer: object) -> bool:
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    # A dual-stack listener ("::") sees an IPv4 client as ::ffff:127.0.0.1.
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class RelaySMTP(SMTP):
    """One client connection."""

    # aiosmtpd sizes the connection's reader by this (and checks DATA lines against it, which
    # smtp_DATA below does itself): commands keep their own limits.
    line_length_limit = READ_LIMIT

    def __init__(self, relay: Relay, *, implicit_tls: bool) -> None:
        self.relay = relay
        self.implicit_tls = implicit_tls
        self._chunks = bytearray()
        self._chunks_refused = False
        self._credentials: LoginPassword | None = None
        # The lines of a reply being gathered to be sent at once (see smtp_EHLO), or None.
        self._held: list[bytes] | None = None
        # The sender whose MAIL FROM check passed last on this connection, and when.
        self.checked_sender: tuple[str, float] | None = None
        # Whether the transaction's message is yet to be counted against the key's rate.
        self.count_at_data = False
        super().__init__(
            _Handler(relay),
            hostname=relay.hostname,
            ident="mailgate ESMTP relay",
            # An implicit-TLS listener is already encrypted: it offers no STARTTLS.
            tls_context=None if implicit_tls else relay.tls_context,
            data_size_limit=submission.DEFAULT_SIZE,
            enable_SMTPUTF8=True,
            auth_required=True,
            auth_require_tls=True,
            auth_exclude_mechanism=[],
            timeout=IDLE_TIMEOUT,
            loop=relay.loop,
        )

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            assert self.session is not None
            # AUTH without TLS only from this machine (or once implicit TLS is up).
            plain_ok = self.relay.plain_on_loopback and is_loopback(self.session.peer)
            self._auth_require_tls = not (plain_ok or self.implicit_tls)

    async def smtp_EHLO(self, hostname: str) -> None:
        size = self.relay.size.cached()
        if size is None:  # not asked of the database for SIZE_CACHE_SECONDS: ask again
            try:
                size = await self.relay.run(self.relay.size.current)
            except Refused as exc:
                await self.push(exc.reply)
                return
        self.data_size_limit = size
        # aiosmtpd pushes the reply's lines one by one, a send to the socket (an SSL record after
        # STARTTLS) and a wake-up of the client each: held and sent as one.
        self._held = []
        try:
            await super().smtp_EHLO(hostname)
        finally:
            held, self._held = self._held, None
        if held and self._writer is not None:
            self._writer.write(b"".join(held))
            await self._writer.drain()

    async def push(self, status: AnyStr) -> None:
        if self._held is None:
            await super().push(status)
            return
        line = status.encode("utf-8") if isinstance(status, str) else status
        self._held.append(line + b"\r\n")

    # AUTH PLAIN and LOGIN: aiosmtpd reads the exchange and hands the credentials to
    # _authenticate(), which cannot wait; they are checked here, off the event loop.

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        self._credentials = auth_data if isinstance(auth_data, LoginPassword) else None
        return AuthResult(success=False, handled=True)

    async def _check_login(self, result: AuthResult) -> AuthResult:
        credentials, self._credentials = self._credentials, None
        if credentials is None:
            return result
        try:
            client = await self.relay.run(
                submission.login,
                credentials.login.decode("utf-8", "replace"),
                credentials.password.decode("utf-8", "replace"),
            )
        except Refused as exc:
            return AuthResult(success=False, handled=False, message=exc.reply)
        if client is None:
            log.warning("relay: failed AUTH from %s", self._peer_host())
            return AuthResult(success=False, handled=False, message=AUTH_FAILED)
        return AuthResult(
            success=True, auth_data=client, message="235 2.7.0 Authentication successful"
        )

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._check_login(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._check_login(await super().auth_LOGIN(server, args))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of a MAIL FROM / RCPT TO argument and the rest (its parameters), as
        aiosmtpd reads them; a common "<local@domain>" without its header parser."""
        match = SIMPLE_PATH.match(arg)
        if match is None or self.local_part_limit:
            return super()._getaddr(arg)
        # The parser drops the folding white space after the ">" (and a comment: left to it).
        rest = arg[match.end() :].lstrip(" \t")
        if rest.startswith("("):
            return super()._getaddr(arg)
        return match.group(1), rest

    def _peer_host(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    # DATA, read in blocks: aiosmtpd reads it line by line, a tenth of a millisecond per KB.

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content, problem = await self._read_data()
        if content is None:
            return  # the client hung up
        if problem:
            self._set_post_data_state()
            await self.push(problem)
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_data(self) -> tuple[bytes | None, str]:
        """The message up to the line with a lone dot, undotted (RFC 5321 4.5.2), and "" or the
        reply refusing it (too large, a line too long; read to its end all the same). None when
        the client hangs up. What follows the dot (a pipelined command) stays in the reader."""
        reader = self._reader
        limit = self.data_size_limit
        pieces: list[bytes] = []
        size = 0
        tail = b"\r\n"  # the last bytes read: the DATA line's CRLF precedes the first line
        too_large = False
        while True:
            try:
                piece = await reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:
                piece = await reader.readexactly(exc.consumed)
            except asyncio.IncompleteReadError:
                return None, ""
            # ".\r\n" ends the data only at the start of a line.
            if piece.endswith(b".\r\n") and (tail + piece[:-3]).endswith(b"\r\n"):
                size += len(piece) - 3
                if not too_large:
                    pieces.append(piece[:-3])
                break
            size += len(piece)
            tail = (tail + piece)[-2:]
            if not too_large:
                pieces.append(piece)
            if limit and size > limit:
                too_large, pieces = True, []
        if too_large or (limit and size > limit):
            return b"", f"552 5.3.4 Message larger than the {limit} bytes this relay takes"
        data = b"".join(pieces)
        if max(map(len, data.split(b"\r\n"))) > MAX_LINE - 2:
            return (
                b"",
                "500 5.5.2 Line too long: at most 1000 octets with CRLF (RFC 5321 4.5.3.1.6)",
            )
        # Dot-stuffing undone: the first dot of every line goes (RFC 5321 4.5.2).
        if b"\r\n." in data or data.startswith(b"."):
            data = (b"\r\n" + data).replace(b"\r\n.", b"\r\n")[2:]
        return data, ""

    # CHUNKING: BDAT <size> [LAST]

    async def smtp_BDAT(self, arg: str) -> None:
        """The chunk's bytes are read whatever the answer, so none of them is taken for a command;
        at LAST the transaction completes through the DATA hook, as DATA does."""
        words = arg.split()
        if (
            not 1 <= len(words) <= 2
            or not words[0].isdigit()
            or (len(words) == 2 and words[1].upper() != "LAST")
        ):
            # Without a size the chunk cannot be told from the commands after it: hang up.
            await self.push("501 5.5.4 Syntax: BDAT <size> [LAST]")
            if self.transport is not None:
                self.transport.close()
            return
        size, last = int(words[0]), len(words) == 2
        try:
            chunk = await self._reader.readexactly(size)
        except asyncio.IncompleteReadError:
            return
        assert self.session is not None and self.envelope is not None
        if await self.check_helo_needed() or await self.check_auth_needed("BDAT"):
            return
        if self.envelope.mail_from is None or not self.envelope.rcpt_tos or self._chunks_refused:
            if last:
                self._set_post_data_state()
            await self.push("503 5.5.1 Error: need MAIL and RCPT before BDAT")
            return
        if self.data_size_limit and len(self._chunks) + size > self.data_size_limit:
            self._chunks_refused = True
            self._chunks = bytearray()
            await self.push(
                f"552 5.3.4 Message larger than the {self.data_size_limit} bytes this relay takes"
            )
            return
        self._chunks += chunk
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        self.envelope.content = self.envelope.original_content = bytes(self._chunks)
        self._chunks = bytearray()
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()
        self._chunks = bytearray()
        self._chunks_refused = False


class _Handler:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def handle_EHLO(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + [f"250-{name}" for name in EXTRA_EXTENSIONS] + responses[-1:]

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        client = session.auth_data
        assert isinstance(client, Client)
        if not address.isascii() and not envelope.smtp_utf8:
            return NEEDS_SMTPUTF8
        checked = server.checked_sender
        now = time.monotonic()
        server.count_at_data = (
            checked is not None
            and checked[0] == address
            and now - checked[1] < SENDER_CHECK_SECONDS
        )
        if not server.count_at_data:
            try:
                await self.relay.run(submission.check_sender, client, address)
            except Refused as exc:
                server.checked_sender = None
                return exc.reply
            server.checked_sender = (address, now)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        limit = submission.max_recipients()
        if len(envelope.rcpt_tos) >= limit:
            return (
                f"452 4.5.3 Too many recipients: at most {limit} per message "
                "(MAILGATE_MAX_RECIPIENTS); send the others in another message"
            )
        if not address.isascii() and not envelope.smtp_utf8:
            return NEEDS_SMTPUTF8
        try:
            parse_mailbox("to", address)
        except InvalidMessage as exc:
            return Refused(553, "5.1.3", str(exc)).reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        client = session.auth_data
        assert isinstance(client, Client)
        data = envelope.original_content or b""
        try:
            message_id = await self.relay.run(
                functools.partial(submission.queue, count=server.count_at_data),
                client,
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                data,
            )
        except Refused as exc:
            server.checked_sender = None
            return exc.reply
        except InvalidMessage as exc:
            return submission.refusal(exc).reply
        except Exception:  # nothing is answered 250 that is not committed: the client retries
            log.exception("relay: queueing a message failed")
            return "451 4.3.0 The message could not be queued: try again later"
        return f"250 2.0.0 OK queued as {message_id}"


class Relay:
    """The SMTP listener (STARTTLS) and the optional implicit-TLS one, on an event loop thread.

    Port 0 picks a free port (`port` / `tls_port` once started). `plain_on_loopback` lets clients on
    this machine log in without TLS.
    """

    def __init__(
        self,
        listen: tuple[str, int] | None,
        tls_context: ssl.SSLContext,
        *,
        listen_tls: tuple[str, int] | None = None,
        plain_on_loopback: bool = True,
        hostname: str | None = None,
    ) -> None:
        if listen is None and listen_tls is None:
            raise ValueError("MAILGATE_SMTP_LISTEN: no listener to start")
        self.listen = listen
        self.listen_tls = listen_tls
        self.tls_context = tls_context
        self.plain_on_loopback = plain_on_loopback
        self.hostname = hostname or socket.gethostname()
        self.size = submission.SizeLimit()
        self.loop = asyncio.new_event_loop()
        self.executor = ThreadPoolExecutor(DATABASE_THREADS, thread_name_prefix="mailgate-relay-db")
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[RelaySMTP] = set()
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.tls_port: int | None = None

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        return await self.loop.run_in_executor(self.executor, func, *args)

    def start(self) -> None:
        """Listen and serve in a background thread; returns once the ports accept connections."""
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="mailgate-relay", daemon=True
        )
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self.loop)
        try:
            future.result(timeout=30)
        except BaseException:
            self.stop()
            raise

    def _protocol(self, implicit_tls: bool) -> RelaySMTP:
        connection = RelaySMTP(self, implicit_tls=implicit_tls)
        self._connections.add(connection)
        return connection

    async def _listen(self) -> None:
        if self.listen is not None:
            server = await self.loop.create_server(
                lambda: self._protocol(False), host=self.listen[0], port=self.listen[1]
            )
            self._servers.append(server)
            self.port = server.sockets[0].getsockname()[1]
            log.info("relay: listening on %s:%s (STARTTLS)", self.listen[0], self.port)
        if self.listen_tls is not None:
            server = await self.loop.create_server(
                lambda: self._protocol(True),
                host=self.listen_tls[0],
                port=self.listen_tls[1],
                ssl=self.tls_context,
            )
            self._servers.append(server)
            self.tls_port = server.sockets[0].getsockname()[1]
            log.info("relay: listening on %s:%s (implicit TLS)", self.listen_tls[0], self.tls_port)

    def stop(self) -> None:
        """Stop listening, close the connections (a message being queued finishes first)."""
        if self._thread is not None and self.loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
            with contextlib.suppress(Exception):
                future.result(timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
        self._thread = None
        self._close_database_connections()
        self.executor.shutdown(wait=True)
        if not self.loop.is_running():
            self.loop.close()

    def _close_database_connections(self) -> None:
        """Each pool thread closes the connection it kept (a database with open sessions cannot be
        dropped, nor a file closed cleanly): one job per thread, held at a barrier until every
        thread has one."""
        barrier = threading.Barrier(DATABASE_THREADS, timeout=10)

        def close() -> None:
            submission.close_connection()
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()

        jobs = [self.executor.submit(close) for _ in range(DATABASE_THREADS)]
        concurrent.futures.wait(jobs, timeout=30)

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        handlers = []
        for connection in list(self._connections):
            if (
                connection._handler_coroutine is not None
                and not connection._handler_coroutine.done()
            ):
                handlers.append(connection._handler_coroutine)
            for transport in (connection.transport, connection._original_transport):
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
        if handlers:
            await asyncio.wait(handlers, timeout=10)
        for server in self._servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=10)

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
