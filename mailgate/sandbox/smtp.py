"""An Exchange Online-like SMTP submission server (aiosmtpd) that authenticates the sandbox's OAuth tokens.

Behaviour and reply texts follow Exchange Online's documentation, Gmail's for its XOAUTH2 failure
path (used for Google tokens) and RFC 7628 for OAUTHBEARER; the comments below cite them by name:
- [Exchange OAuth] https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
- [SMTP AUTH] https://learn.microsoft.com/en-us/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission
- [Exchange limits] https://learn.microsoft.com/en-us/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits#sending-limits-1
  and https://learn.microsoft.com/en-us/exchange/troubleshoot/send-emails/smtp-submission-improvements
- [Gmail XOAUTH2] https://developers.google.com/workspace/gmail/imap/xoauth2-protocol
docs/sandbox.md lists each emulated behaviour with its source.

Deliberate differences from Exchange Online: OAUTHBEARER is offered too (Exchange offers only
XOAUTH2); EHLO leaves out DSN and BINARYMIME, which this server does not implement; no
copy goes to Sent Items and no continuous-error throttling (550 5.2.25x) is applied; mail held back
by the 30-a-minute rate is delivered to the sandbox mailboxes later, the SMTP reply is not delayed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import collections
import contextlib
import email.utils
import heapq
import itertools
import json
import logging
import re
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailgate.sandbox.interfaces import MailboxDelivery, MailPolicy, MailStore
from mailgate.sandbox.tokens import InvalidToken

log = logging.getLogger("mailgate.sandbox.smtp")

# Exchange Online's advertised maximum message size (its EHLO says "250-SIZE 157286400").
EXCHANGE_SIZE_LIMIT = 157_286_400
GOOGLE_AUDIENCE = "https://mail.google.com/"
# Google's opaque access tokens start with "ya29."; a failing one gets Gmail's failure path
# ([Gmail XOAUTH2]).
GOOGLE_TOKEN_PREFIX = "ya29."
DAY = 86_400.0
MINUTE = 60.0

# Reply texts: [Exchange OAuth], [SMTP AUTH] (Exchange) and [Gmail XOAUTH2], verbatim where documented.
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.3 Authentication unsuccessful [{host}]"
AUTH_DISABLED = (
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the {which}. "
    "Visit https://aka.ms/smtp_auth_disabled for more information. [{host}]"
)
BASIC_AUTH_DISABLED = (
    "535 5.7.139 Authentication unsuccessful, basic authentication is disabled. [{host}]"
)
NOT_AUTHENTICATED = "530 5.7.57 Client not authenticated to send mail. [{host}]"
TOO_MANY_CONNECTIONS = (
    "432 4.3.2 Concurrent connections limit exceeded. "
    "Visit https://aka.ms/concurrent_sending for more information. [Hostname={host}]"
)
SEND_AS_DENIED = (
    "554 5.2.252 SendAsDenied; {user} not allowed to send as {sender}; "
    "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; "
    "Failed to process message due to a permanent exception with message "
    "[BeginDiagnosticData]Cannot submit message. [Hostname={host}]"
)
QUOTA_EXCEEDED = (
    "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; "
    "Failed to process message due to a permanent exception with message Cannot submit message. "
    "[Hostname={host}]"
)
ACCEPTED = "250 2.0.0 OK <{id}> [Hostname={host}]"
UNKNOWN_MECHANISM = "504 5.7.4 Unrecognized authentication type [{host}]"
GOOGLE_AUTH_OK = "235 2.7.0 Accepted"
GOOGLE_AUTH_FAILED = (
    "535-5.7.8 Username and Password not accepted. For more information, go to",
    "535 5.7.8  https://support.google.com/mail/?p=BadCredentials {id} - gsmtp",
)
GOOGLE_CHALLENGE = {"status": "400", "schemes": "Bearer", "scope": GOOGLE_AUDIENCE}
GOOGLE_DAILY_LIMIT = (
    "550 5.4.5 Daily user sending limit exceeded. For more information on Gmail 5.4.5 "
    "sending limits go to 5.4.5 https://support.google.com/a/answer/166852 {id} - gsmtp"
)
GOOGLE_ACCEPTED = "250 2.0.0 OK  {stamp} {id} - gsmtp"
MECHANISMS = ("LOGIN", "XOAUTH2", "OAUTHBEARER")


class AuthFailure(Exception):
    """A SASL exchange that must end in a failure reply; `reason` is for the log only (never the token)."""

    def __init__(self, reason: str, *, google: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.google = google


@dataclass(frozen=True)
class SaslCredentials:
    """What a client presented: the mailbox it asks for (`user=` / authzid, may be empty) and the token."""

    user: str
    token: str


def _kv_pairs(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in text.split("\x01"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise AuthFailure("malformed key/value pair in the SASL response")
        pairs.setdefault(key.strip().lower(), value)
    return pairs


def _bearer(pairs: dict[str, str]) -> str:
    scheme, _, token = pairs.get("auth", "").strip().partition(" ")
    # RFC 7628 §3.1: the scheme name is case-insensitive.
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthFailure("no 'auth=Bearer <token>' in the SASL response")
    return token.strip()


def parse_xoauth2(decoded: bytes) -> SaslCredentials:
    """`user=U^Aauth=Bearer T^A^A` ([Exchange OAuth]) → credentials, else AuthFailure."""
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuthFailure("the XOAUTH2 response is not UTF-8") from exc
    pairs = _kv_pairs(text)
    user = pairs.get("user", "").strip()
    if not user:
        raise AuthFailure("no 'user=' in the XOAUTH2 response")
    return SaslCredentials(user=user, token=_bearer(pairs))


def parse_oauthbearer(decoded: bytes) -> SaslCredentials:
    """RFC 7628 §3.1 `n,a=U,^A[host=H^A][port=P^A]auth=Bearer T^A^A` → credentials, else AuthFailure."""
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuthFailure("the OAUTHBEARER response is not UTF-8") from exc
    header, sep, rest = text.partition("\x01")
    if not sep:
        raise AuthFailure("no GS2 header in the OAUTHBEARER response")
    flag, _, after_flag = header.partition(",")
    if flag not in ("n", "y"):
        # "p=..." asks for channel binding, which OAUTHBEARER does not support.
        raise AuthFailure("unsupported GS2 channel-binding flag")
    authzid_field, _, _ = after_flag.partition(",")
    user = ""
    if authzid_field:
        if not authzid_field.startswith("a="):
            raise AuthFailure("malformed GS2 authzid")
        # RFC 5801 saslname escaping: "=2C" is ",", "=3D" is "=".
        user = authzid_field[2:].replace("=2C", ",").replace("=3D", "=").strip()
    return SaslCredentials(user=user, token=_bearer(_kv_pairs(rest)))


def _short_scopes(value: Any) -> set[str]:
    """`scp` as short names: "https://outlook.office.com/SMTP.Send" and "SMTP.Send" both give "SMTP.Send"."""
    if isinstance(value, str):
        items: Iterable[Any] = value.split()
    elif isinstance(value, list | tuple):
        items = value
    else:
        return set()
    return {str(item).rstrip("/").rsplit("/", 1)[-1] for item in items}


def _header_addresses(data: bytes, name: str) -> list[str]:
    headers = BytesHeaderParser().parsebytes(data)
    values = [str(v) for v in headers.get_all(name, [])]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def _replace_from_header(data: bytes, address: str) -> bytes:
    """The message with its From header set to `address` (what Gmail does when the alias is not allowed)."""
    match = re.search(rb"\r?\n\r?\n", data)
    end = match.start() if match else len(data)
    head, body = data[:end], data[end:]
    new_head, count = re.subn(
        rb"(?im)^From:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*", b"From: " + address.encode(), head, count=1
    )
    if not count:
        new_head = b"From: " + address.encode() + b"\r\n" + head
    return new_head + body


@dataclass
class _MailboxCounters:
    """Per-mailbox limits bookkeeping, in sandbox-clock seconds."""

    connections: int = 0
    # Release times of recently accepted messages (ascending), for the 30-a-minute delay.
    releases: list[float] = field(default_factory=list)
    # (accepted_at, recipients) of recently accepted messages, for the rolling 24-hour quota.
    recipients: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    # The sum of the counts in `recipients`, kept as they come and go (summing was O(messages)).
    recipients_total: int = 0


@dataclass(order=True)
class _Pending:
    release_at: float
    seq: int
    rcpt: str = field(compare=False)
    raw: bytes = field(compare=False)


@dataclass
class _Login:
    """A successful AUTH: the mailbox the session acts for, and which provider's behaviour it gets."""

    mailbox: str
    google: bool
    counted: bool


class _Handler:
    """aiosmtpd hooks: Exchange's MAIL/RCPT texts and the DATA checks (send-as, quota, rate)."""

    def __init__(self, server: ExchangeSMTPServer) -> None:
        self.server = server

    async def handle_MAIL(
        self,
        smtp: ExchangeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self,
        smtp: ExchangeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, smtp: ExchangeSMTP, session: Session, envelope: Envelope) -> str:
        login = session.auth_data
        assert isinstance(login, _Login)
        data = envelope.original_content or b""
        return await self.server._accept(
            smtp, login, session, envelope.mail_from or "", list(envelope.rcpt_tos), data
        )


class ChunkingSMTP(SMTP):
    """aiosmtpd's SMTP server plus CHUNKING (RFC 3030), which Exchange advertises in its EHLO.

    Subclasses advertise CHUNKING in their EHLO reply; aiosmtpd itself implements no BDAT.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The chunks of the transaction in progress, and whether one of them was refused.
        self._bdat_chunks = bytearray()
        self._bdat_refused = False
        super().__init__(*args, **kwargs)

    async def smtp_BDAT(self, arg: str) -> None:
        """BDAT: the chunk's bytes are read whatever the reply, so that none of them is taken for a
        command; the transaction completes at LAST through the handler's DATA hook."""
        parts = arg.upper().split()
        if not 1 <= len(parts) <= 2 or not parts[0].isdigit() or parts[1:] not in ([], ["LAST"]):
            # Without a size the chunk cannot be told from commands: end the session.
            await self.push("501 5.5.4 Invalid arguments")
            if self.transport is not None:
                self.transport.close()
            return
        size, last = int(parts[0]), len(parts) == 2
        try:
            chunk = await self._reader.readexactly(size)
        except asyncio.IncompleteReadError:
            return
        assert self.session is not None and self.envelope is not None
        envelope = self.envelope
        if not self.session.host_name:
            await self.push("503 5.5.2 Send hello first")
            return
        if await self.check_auth_needed("BDAT"):
            return
        if not envelope.mail_from or not envelope.rcpt_tos or self._bdat_refused:
            if last:  # the failed transaction ends here
                self._set_post_data_state()
            await self.push("503 5.5.1 Bad sequence of commands")
            return
        if self.data_size_limit and len(self._bdat_chunks) + size > self.data_size_limit:
            self._bdat_refused = True
            await self.push("552 5.3.4 Message size exceeds fixed maximum message size")
            return
        self._bdat_chunks += chunk
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        envelope.content = envelope.original_content = bytes(self._bdat_chunks)
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    def _set_post_data_state(self) -> None:
        """A new transaction (after DATA, BDAT LAST, RSET or EHLO): no chunks kept."""
        super()._set_post_data_state()
        self._bdat_chunks = bytearray()
        self._bdat_refused = False


class ExchangeSMTP(ChunkingSMTP):
    """One client connection: STARTTLS, then AUTH XOAUTH2 / OAUTHBEARER (LOGIN only to refuse it)."""

    # Entra ID access tokens are often 1.5-3 KB: allow long SASL lines.
    line_length_limit = 16_384
    command_size_limits: dict[str, int] = collections.defaultdict(lambda: SMTP.command_size_limit)

    def __init__(self, server: ExchangeSMTPServer, **kwargs: Any) -> None:
        self.server = server
        super().__init__(
            _Handler(server),
            hostname=server.hostname,
            ident=f"Microsoft ESMTP MAIL Service ready at {email.utils.formatdate(localtime=False)}",
            tls_context=server.tls_context,
            data_size_limit=EXCHANGE_SIZE_LIMIT,
            enable_SMTPUTF8=True,
            auth_required=False,
            auth_require_tls=True,
            loop=server._loop,
            **kwargs,
        )
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit, {"AUTH": self.line_length_limit}
        )
        # Before EHLO (e.g. right after STARTTLS) too, so that a long AUTH line gets "Send hello
        # first" rather than "line too long".
        self.command_size_limit = self.line_length_limit
        self._login: _Login | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.server._connections.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.server._connections.discard(self)
        if self._login is not None and self._login.counted:
            self.server._release_connection(self._login.mailbox)
            self._login = None
        super().connection_lost(error)

    def _host(self) -> str:
        return self.hostname

    async def check_auth_needed(self, caller_method: str) -> bool:
        assert self.session is not None
        if not self.session.authenticated:
            await self.push(NOT_AUTHENTICATED.format(host=self._host()))
            return True
        return False

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Invalid domain name")
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        peer = self.session.peer[0] if isinstance(self.session.peer, tuple) else self.session.peer
        # Exchange's EHLO, less DSN and BINARYMIME which this server does not
        # implement; AUTH only once TLS is up.
        lines = [f"{self.hostname} Hello [{peer}]", f"SIZE {EXCHANGE_SIZE_LIMIT}", "PIPELINING"]
        lines += ["ENHANCEDSTATUSCODES", "CHUNKING"]
        if self._tls_protocol is None:
            lines.append("STARTTLS")
        else:
            lines.append("AUTH " + " ".join(MECHANISMS))
        lines += ["8BITMIME", "SMTPUTF8"]
        for line in lines[:-1]:
            await self.push("250-" + line)
        await self.push("250 " + lines[-1])

    async def smtp_AUTH(self, arg: str) -> None:
        assert self.session is not None
        if not self.session.host_name:
            await self.push("503 5.5.2 Send hello first")
            return
        if self._tls_protocol is None or not self.session.extended_smtp:
            # Exchange advertises no AUTH before STARTTLS and refuses it as an unknown mechanism.
            await self.push(UNKNOWN_MECHANISM.format(host=self._host()))
            return
        if self.session.authenticated:
            await self.push("503 5.5.2 Already authenticated")
            return
        if not arg:
            await self.push("501 5.5.4 Invalid arguments")
            return
        parts = arg.split()
        if len(parts) > 2:
            await self.push("501 5.5.4 Invalid arguments")
            return
        mechanism = parts[0].upper()
        initial = parts[1] if len(parts) == 2 else None
        if mechanism not in MECHANISMS:
            await self.push(UNKNOWN_MECHANISM.format(host=self._host()))
            return
        if mechanism == "LOGIN":
            await self._refuse_login(initial)
            return
        await self._oauth(mechanism, initial)

    async def _read_sasl_line(self) -> bytes | None:
        line = await self._reader.readline()
        blob = line.strip()
        if blob == b"*":
            await self.push("501 5.7.0 Authentication aborted")
            return None
        return blob

    async def _refuse_login(self, initial: str | None) -> None:
        # Exchange still walks AUTH LOGIN through both prompts before refusing basic auth.
        if initial is None:
            await self.push("334 VXNlcm5hbWU6")
            if await self._read_sasl_line() is None:
                return
        await self.push("334 UGFzc3dvcmQ6")
        if await self._read_sasl_line() is None:
            return
        log.info("%s: AUTH LOGIN refused (basic authentication is disabled)", self.session_peer())
        await self.push(BASIC_AUTH_DISABLED.format(host=self._host()))

    def session_peer(self) -> str:
        peer = self.session.peer if self.session else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def _oauth(self, mechanism: str, initial: str | None) -> None:
        if initial is None:
            # The two-step form: an empty 334 challenge, then the client's response ([Exchange OAuth]).
            await self.push("334 ")
            blob = await self._read_sasl_line()
            if blob is None:
                return
        else:
            blob = b"" if initial == "=" else initial.encode("ascii", "replace")
        token = ""
        try:
            try:
                decoded = base64.b64decode(blob, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise AuthFailure("the SASL response is not base64") from exc
            creds = parse_xoauth2(decoded) if mechanism == "XOAUTH2" else parse_oauthbearer(decoded)
            token = creds.token
            login, reply = self.server._authenticate(creds)
        except AuthFailure as failure:
            google = failure.google or token.startswith(GOOGLE_TOKEN_PREFIX)
            log.info("%s: AUTH %s failed: %s", self.session_peer(), mechanism, failure.reason)
            await self._fail(mechanism, google)
            return
        if reply is not None:
            await self.push(reply)
            return
        assert self.session is not None
        self._login = login
        self.session.authenticated = True
        self.session.auth_data = login  # type: ignore[assignment]
        log.info("%s: AUTH %s as %s", self.session_peer(), mechanism, login.mailbox)
        await self.push(GOOGLE_AUTH_OK if login.google else AUTH_OK)

    async def _fail(self, mechanism: str, google: bool) -> None:
        if google:
            # Gmail: an error challenge, the client's empty reply, then 535 5.7.8 ([Gmail XOAUTH2]).
            await self.push(
                "334 " + base64.b64encode(json.dumps(GOOGLE_CHALLENGE).encode()).decode()
            )
            await self._reader.readline()
            await self.push(GOOGLE_AUTH_FAILED[0])
            await self.push(GOOGLE_AUTH_FAILED[1].format(id=self.server._gsmtp_id()))
            return
        if mechanism == "OAUTHBEARER":
            # RFC 7628 §3.2.2: the server answers a failure with an error challenge; the client
            # replies with a lone ^A (or aborts), then gets the final failure.
            challenge = {
                "status": "invalid_token",
                "schemes": "bearer",
                "scope": "https://outlook.office.com/SMTP.Send",
            }
            await self.push("334 " + base64.b64encode(json.dumps(challenge).encode()).decode())
            await self._reader.readline()
        await self.push(AUTH_FAILED.format(host=self._host()))


class ExchangeSMTPServer:
    """The sandbox's SMTP submission server, serving on its own event-loop thread; port 0 picks a free port."""

    def __init__(
        self,
        host: str,
        port: int,
        tls_context: ssl.SSLContext,
        policy: MailPolicy,
        store: MailStore,
        delivery: MailboxDelivery | None = None,
        hostname: str = "sandbox.outlook.localhost",
    ) -> None:
        self.host = host
        self.requested_port = port
        self.tls_context = tls_context
        self.policy = policy
        self.store = store
        self.delivery = delivery
        self.hostname = hostname
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._port: int | None = None
        self._connections: set[ExchangeSMTP] = set()
        self._lock = threading.Lock()
        self._mailboxes: dict[str, _MailboxCounters] = collections.defaultdict(_MailboxCounters)
        self._pending: list[_Pending] = []
        self._seq = itertools.count()
        self.delivery_errors: list[str] = []

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the SMTP server is not started")
        return self._port

    def start(self) -> None:
        """Listen and serve in a background thread; returns once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the SMTP server is already started")
        if self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sandbox-smtp", daemon=True
        )
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        try:
            future.result(timeout=10)
        except BaseException:
            self.stop()
            raise

    async def _serve(self) -> None:
        self._server = await self._loop.create_server(
            lambda: ExchangeSMTP(self), host=self.host, port=self.requested_port
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._ticker = self._loop.create_task(self._release_due())

    def stop(self) -> None:
        """Close the listener and every connection, and stop the thread; the server may start again."""
        if self._thread is None:
            if not self._loop.is_closed():
                self._loop.close()
            return
        if self._loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            with contextlib.suppress(Exception):
                future.result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        if not self._loop.is_running():
            self._loop.close()

    async def _shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
        handlers = []
        for connection in list(self._connections):
            if connection._handler_coroutine is not None:
                handlers.append(connection._handler_coroutine)
            # abort(), not close(): a TLS close waits for the peer's close_notify.
            if isinstance(connection.transport, asyncio.Transport):
                connection.transport.abort()
            original = connection._original_transport
            if isinstance(original, asyncio.Transport):
                original.abort()
        if handlers:
            # Closing a transport cancels its handler on the next loop turns; wait for that.
            await asyncio.wait(handlers, timeout=5)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
        # Mail held back by the per-minute rate was accepted: deliver it now rather than lose it.
        with self._lock:
            held, self._pending = self._pending, []
        for item in sorted(held):
            await self._deliver(item.rcpt, item.raw)

    def __enter__(self) -> ExchangeSMTPServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- authentication -------------------------------------------------------------------

    def _authenticate(self, creds: SaslCredentials) -> tuple[_Login, str | None]:
        """Check a presented token; return the login and None, or a login and the reply that refuses it."""
        try:
            claims = self.policy.verify_access_token(creds.token)
        except InvalidToken as exc:
            raise AuthFailure(str(exc)) from exc
        if claims.get("aud") == GOOGLE_AUDIENCE:
            return self._authenticate_google(creds, claims), None
        mailbox = creds.user.lower()
        roles = claims.get("roles")
        if "scp" not in claims and isinstance(roles, list):
            # App-only token (client credentials): the role, and the mailbox named by user=
            # ([Exchange OAuth], app-only access).
            if "SMTP.SendAsApp" not in roles:
                raise AuthFailure("the app-only token has no SMTP.SendAsApp role")
            if not mailbox:
                raise AuthFailure("an app-only token needs the mailbox in user=")
        else:
            if "SMTP.Send" not in _short_scopes(claims.get("scp")):
                raise AuthFailure("the token has no SMTP.Send scope")
            token_user = self.policy.token_service(claims).lower()
            if not mailbox:
                mailbox = token_user
            if mailbox != token_user and not self.policy.may_send_as(token_user, mailbox):
                # user= may name another mailbox only when the token's user has access to it
                # (the shared mailbox rule of [Exchange OAuth]).
                raise AuthFailure(f"user={mailbox} is not the token's user {token_user}")
        if not self.policy.mailbox_exists(mailbox):
            raise AuthFailure(f"no mailbox {mailbox}")
        which = self.policy.smtp_auth_disabled(mailbox)
        if which:
            login = _Login(mailbox=mailbox, google=False, counted=False)
            return login, AUTH_DISABLED.format(which=which, host=self.hostname)
        limit = self.policy.submission_limits(mailbox).connections
        with self._lock:
            counters = self._mailboxes[mailbox]
            if counters.connections >= limit:
                login = _Login(mailbox=mailbox, google=False, counted=False)
                return login, TOO_MANY_CONNECTIONS.format(host=self.hostname)
            counters.connections += 1
        return _Login(mailbox=mailbox, google=False, counted=True), None

    def _authenticate_google(self, creds: SaslCredentials, claims: dict[str, Any]) -> _Login:
        address = str(claims.get("email", "")).lower()
        if GOOGLE_AUDIENCE.rstrip("/") not in {
            s.rstrip("/") for s in str(claims.get("scp", "")).split()
        }:
            raise AuthFailure("the Google token lacks https://mail.google.com/", google=True)
        if not address or (creds.user and creds.user.lower() != address):
            raise AuthFailure(f"user={creds.user} is not the token's account", google=True)
        return _Login(mailbox=address, google=True, counted=False)

    def _release_connection(self, mailbox: str) -> None:
        with self._lock:
            counters = self._mailboxes[mailbox]
            counters.connections = max(0, counters.connections - 1)

    def connection_count(self, mailbox: str) -> int:
        """Authenticated connections currently open for `mailbox`."""
        with self._lock:
            return self._mailboxes[mailbox.lower()].connections

    def _gsmtp_id(self) -> str:
        return base64.b32encode(next(self._seq).to_bytes(5, "big")).decode().lower().rstrip("=")

    # -- submission -----------------------------------------------------------------------

    async def _accept(
        self,
        smtp: ExchangeSMTP,
        login: _Login,
        session: Session,
        mail_from: str,
        rcpt_tos: list[str],
        data: bytes,
    ) -> str:
        mailbox = login.mailbox
        senders = {a.lower() for a in [mail_from, *_header_addresses(data, "From")] if a}
        denied = sorted(
            s for s in senders if s != mailbox and not self.policy.may_send_as(mailbox, s)
        )
        if denied and login.google:
            # Gmail rewrites a From it may not use to the account's own address instead of refusing.
            data = _replace_from_header(data, mailbox)
            mail_from = mailbox
        elif denied:
            log.info("%s: send as %s denied for %s", smtp.session_peer(), denied[0], mailbox)
            return SEND_AS_DENIED.format(user=mailbox, sender=denied[0], host=self.hostname)
        now = self.policy.now()
        limits = self.policy.submission_limits(mailbox)
        with self._lock:
            counters = self._mailboxes[mailbox]
            while counters.recipients and counters.recipients[0][0] <= now - DAY:
                counters.recipients_total -= counters.recipients.popleft()[1]
            if counters.recipients_total + len(rcpt_tos) > limits.recipients_per_day:
                log.info("%s: %s over its daily recipients quota", smtp.session_peer(), mailbox)
                if login.google:
                    return GOOGLE_DAILY_LIMIT.format(id=self._gsmtp_id())
                return QUOTA_EXCEEDED.format(host=self.hostname)
            counters.recipients.append((now, len(rcpt_tos)))
            counters.recipients_total += len(rcpt_tos)
            release_at = (
                now if login.google else self._release_time(counters, now, limits.per_minute)
            )
        message_id = await self._loop.run_in_executor(
            None,
            lambda: self.store.add(
                mail_from=mail_from, rcpt_tos=rcpt_tos, data=data, authenticated_as=mailbox
            ),
        )
        await self._route(smtp, session, message_id, mail_from, rcpt_tos, data, release_at, now)
        if login.google:
            return GOOGLE_ACCEPTED.format(stamp=int(now), id=self._gsmtp_id())
        return ACCEPTED.format(id=message_id, host=self.hostname)

    @staticmethod
    def _release_time(counters: _MailboxCounters, now: float, per_minute: int) -> float:
        """When a message accepted now may be delivered: over `per_minute` in a minute is carried over
        to the following minutes (delayed, not refused: [Exchange limits])."""
        releases = counters.releases
        del releases[: bisect.bisect_right(releases, now - MINUTE)]
        release = now
        if per_minute > 0 and len(releases) >= per_minute:
            release = max(now, releases[-per_minute] + MINUTE)
        bisect.insort(releases, release)
        return release

    async def _route(
        self,
        smtp: ExchangeSMTP,
        session: Session,
        message_id: str,
        mail_from: str,
        rcpt_tos: list[str],
        data: bytes,
        release_at: float,
        now: float,
    ) -> None:
        if self.delivery is None:
            return
        peer = session.peer[0] if isinstance(session.peer, tuple) else session.peer
        stamp = email.utils.formatdate(now, localtime=False)
        trace = (
            f"Return-Path: <{mail_from}>\r\n"
            f"Received: from {session.host_name} ([{peer}]) by {self.hostname} with ESMTPSA"
            f" id {message_id}; {stamp}\r\n"
        ).encode()
        local = [
            r for r in dict.fromkeys(r.lower() for r in rcpt_tos) if self.policy.mailbox_exists(r)
        ]
        if release_at > now:
            with self._lock:
                for rcpt in local:
                    heapq.heappush(
                        self._pending, _Pending(release_at, next(self._seq), rcpt, trace + data)
                    )
            return
        for rcpt in local:
            await self._deliver(rcpt, trace + data)

    async def _deliver(self, rcpt: str, raw: bytes) -> None:
        assert self.delivery is not None
        try:
            await self._loop.run_in_executor(None, self.delivery.deliver, rcpt, raw)
        except Exception as exc:
            # Exchange would bounce later; the submission itself stays accepted.
            log.exception("delivery to %s failed", rcpt)
            self.delivery_errors.append(f"{rcpt}: {exc}")

    def pending_deliveries(self) -> list[tuple[float, str]]:
        """(release time on the sandbox clock, recipient) of deliveries held back by the per-minute rate."""
        with self._lock:
            return sorted((p.release_at, p.rcpt) for p in self._pending)

    async def _release_due(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            if not self._pending:
                continue
            now = self.policy.now()
            due: list[_Pending] = []
            with self._lock:
                while self._pending and self._pending[0].release_at <= now:
                    due.append(heapq.heappop(self._pending))
            for item in due:
                await self._deliver(item.rcpt, item.raw)
