"""A scriptable aiosmtpd SMTP server on a loopback port, for outbox and transport tests.

Replies can be scripted per command (`mail_reply`, `rcpt_reply`, `data_reply`: a string or a callable
returning a reply or None for the default); AUTH PLAIN/LOGIN against `users`; STARTTLS with a context.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailgate.sandbox.smtp import ChunkingSMTP

Reply = str | Callable[[Envelope], str | None] | None


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None
    mail_options: list[str] = field(default_factory=list)


@dataclass
class _Handler:
    sink: SMTPSink

    def _scripted(self, reply: Reply, envelope: Envelope) -> str | None:
        if reply is None:
            return None
        if callable(reply):
            return reply(envelope)
        return reply

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.sink.pipelining:
            responses.insert(-1, "250-PIPELINING")
        if self.sink.chunking:
            responses.insert(-1, "250-CHUNKING")
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        answer = self._scripted(self.sink.mail_reply, envelope)
        if answer and not answer.startswith("2"):
            return answer  # refused: no transaction starts
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return answer or "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.sink.rcpt_reply
        answer = reply(address) if callable(reply) else reply
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.sink.lock:
            self.sink.in_data += 1
            self.sink.max_in_data = max(self.sink.max_in_data, self.sink.in_data)
        try:
            return await self._data(server, session, envelope)
        finally:
            with self.sink.lock:
                self.sink.in_data -= 1

    async def _data(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.sink.data_delay:
            await asyncio.sleep(self.sink.data_delay)
        answer = self._scripted(self.sink.data_reply, envelope)
        if answer:
            return answer
        login = (
            session.auth_data.login.decode()
            if isinstance(session.auth_data, LoginPassword)
            else None
        )
        with self.sink.lock:
            self.sink.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    bytes(envelope.original_content or b"") if self.sink.keep_data else b"",
                    login,
                    list(envelope.mail_options),
                )
            )
            number = len(self.sink.received)
        drop = self.sink.drop_after_data
        if drop is not None and drop():
            # Accepted, but the connection dies before the reply: the at-most-once boundary.
            server.transport.close()
        return f"250 2.0.0 Ok: queued as Q{number:06d}"


class _CountingSMTP(ChunkingSMTP):
    """Counts open connections, so tests can check the concurrent-connection limit."""

    def __init__(self, sink: SMTPSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink = sink

    def connection_made(self, transport: Any) -> None:
        with self.sink.lock:
            self.sink.active += 1
            self.sink.max_active = max(self.sink.max_active, self.sink.active)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        with self.sink.lock:
            self.sink.active -= 1
        super().connection_lost(error)

    async def _bearer(self, mechanism: str, args: list[str]) -> AuthResult:
        """XOAUTH2 / OAUTHBEARER: the token must equal the user's entry in `users`."""
        if len(args) > 1:
            blob = base64.b64decode(args[1])
        else:
            answer = await self.challenge_auth("")
            if not isinstance(answer, bytes):
                return AuthResult(success=False)
            blob = answer
        fields = dict(part.split("=", 1) for part in blob.decode().split("\x01") if "=" in part)
        user = fields.get("user", "")
        if mechanism == "OAUTHBEARER":
            user = blob.decode().split(",")[1].removeprefix("a=")
        token = fields.get("auth", "").removeprefix("Bearer ")
        self.sink.bearer_logins.append((mechanism, user))
        return self._authenticate(mechanism, LoginPassword(user.encode(), token.encode()))

    async def auth_XOAUTH2(self, _: Any, args: list[str]) -> AuthResult:
        return await self._bearer("XOAUTH2", args)

    async def auth_OAUTHBEARER(self, _: Any, args: list[str]) -> AuthResult:
        return await self._bearer("OAUTHBEARER", args)

    async def smtp_BDAT(self, arg: str) -> None:
        self.sink.bdat_commands += 1
        if self.sink.chunking == "hang-up":
            assert self.transport is not None
            self.transport.close()
            return
        if self.sink.chunking != "yes":
            await self.push('500 Error: command "BDAT" not recognized')  # aiosmtpd's own reply
            return
        await super().smtp_BDAT(arg)


@dataclass
class SMTPSink:
    users: dict[str, str] | None = None
    tls_context: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    mail_reply: Reply = None
    rcpt_reply: Any = None
    data_reply: Reply = None
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    data_delay: float = 0.0
    connections: int = 0
    active: int = 0
    max_active: int = 0
    # Messages whose end of data (final "." or BDAT LAST) is being answered right now, and the
    # most at once: with `data_delay`, the deliveries that overlapped.
    in_data: int = 0
    max_in_data: int = 0
    auth_attempts: int = 0
    # Advertise PIPELINING (RFC 2920); aiosmtpd reads pipelined commands one after another.
    pipelining: bool = False
    # Advertise CHUNKING (RFC 3030): "yes" with BDAT implemented, "broken" without it (BDAT is then
    # an unknown command, as on a server that advertises what it does not do), "hang-up" closing the
    # connection at BDAT.
    chunking: str = ""
    bdat_commands: int = 0
    # SASL bearer mechanisms accepted (the token is checked against `users` like a password).
    bearer_mechanisms: tuple[str, ...] = ("XOAUTH2", "OAUTHBEARER")
    bearer_logins: list[tuple[str, str]] = field(default_factory=list)
    # False: the content of received messages is not kept (a long benchmark's memory).
    keep_data: bool = True
    # Called after each accepted message: True closes the connection before the reply is sent.
    drop_after_data: Callable[[], bool] | None = None
    # Advertise SMTPUTF8 (RFC 6531) and take UTF-8 addresses with it; aiosmtpd's default is off.
    smtputf8: bool = False

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        self.auth_attempts += 1
        if isinstance(auth_data, LoginPassword) and self.users is not None:
            user, password = auth_data.login.decode(), auth_data.password.decode()
            if self.users.get(user) == password:
                return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    def _factory(self) -> SMTP:
        self.connections += 1
        kwargs: dict[str, Any] = {}
        if self.users is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_require_tls=self.tls_context is not None,
                auth_required=True,
                auth_exclude_mechanism=[
                    m for m in ("XOAUTH2", "OAUTHBEARER") if m not in self.bearer_mechanisms
                ],
            )
        if self.tls_context is not None:
            kwargs.update(tls_context=self.tls_context, require_starttls=True)
        if self.smtputf8:
            kwargs.update(enable_SMTPUTF8=True)
        return _CountingSMTP(
            self, _Handler(self), hostname="sink.localhost", ident="sink", **kwargs
        )

    def start(self) -> SMTPSink:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def serve() -> asyncio.AbstractServer:
            return await asyncio.get_running_loop().create_server(self._factory, sock=sock)

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Close the listener and every connection; `start()` again listens on the same port."""
        if self._loop is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._server.wait_closed(), 2)
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None

    def __enter__(self) -> SMTPSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
