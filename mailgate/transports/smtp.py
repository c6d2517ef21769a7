"""SMTP submission: STARTTLS / implicit TLS / plain, XOAUTH2 for OAuth mailboxes, PLAIN/LOGIN, client certificates.

Each protocol step is a method (connect, starttls, authenticate, mail, rcpt, data, abort) so that the
connection test can run them one by one; `open()` + `send_messages()` is what the outbox worker uses.
Certificate verification is always on: trust comes from the system store and SSL_CERT_FILE.
The caller hands in the Endpoint and the credential (mailgate.transports.credentials).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable

from mailgate.transports.base import (
    Envelope,
    Reply,
    SendResult,
    Transport,
    TransportError,
    close_quietly,
    tls_context,
)
from mailgate.transports.credentials import (
    BearerToken,
    Credential,
    Endpoint,
    Password,
    bearer_response,
)

log = logging.getLogger("mailgate.transports")

# host:port of servers that advertised CHUNKING but did not take BDAT, for this process's lifetime.
_WITHOUT_BDAT: set[str] = set()

# Linux's switch for acknowledging received data at once (absent elsewhere); see _ack_promptly.
TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)

# Send the XOAUTH2 response inline only while the AUTH line stays short: Dovecot's submission service
# refuses command lines over 4 KiB and Postfix's default line_length_limit is 2048, and Entra ID tokens
# are often 1.5-3 KB (docs/test-peers.md, notes 9 and 10). Exchange documents the
# continuation form: https://learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
MAX_INITIAL_RESPONSE = 500

QUEUE_ID_PATTERNS = [
    re.compile(r"queued as\s+<?([^\s;,>]+)", re.I),  # Postfix, Sendmail
    re.compile(r"\bid=<?([^\s;,>]+)", re.I),  # Exim
    re.compile(
        r"^ok:?\s+<?([^\s\[;,>]+)>?", re.I
    ),  # Exchange ("OK <id> [Hostname=...]"), Gmail, sandbox
]


def parse_queue_id(text: str) -> str:
    """The queue ID a 250 reply after DATA mentions, or ""."""
    for pattern in QUEUE_ID_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)[:255]
    return ""


def _to_report(kept: TransportError | None, new: TransportError) -> TransportError:
    """Of two recipient refusals, the one to report when none was accepted: the first, unless it is
    permanent and the new one temporary (a temporary refusal means the message is retried)."""
    if kept is None or (kept.permanent and not new.permanent):
        return new
    return kept


# What follows the content's last CRLF to complete a DATA transaction (RFC 5321 section 4.1.1.4).
END_OF_DATA = b".\r\n"


def _dot_stuffed(data: bytes) -> bytes:
    """Message content as sent after DATA, without END_OF_DATA: leading dots doubled (RFC 5321
    section 4.5.2), ending with CRLF."""
    stuffed = data
    if data.startswith(b".") or b"\n." in data:
        stuffed = re.sub(rb"(?m)^\.", b"..", data)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed


def non_ascii_address(envelope: Envelope) -> str:
    """The envelope's first address that is not ASCII (a UTF-8 local part), or ""."""
    for address in (envelope.mail_from, *envelope.recipients):
        if not address.isascii():
            return address
    return ""


def has_utf8_headers(data: bytes) -> bool:
    """True when the message's header block is not ASCII (UTF-8 headers, RFC 6532)."""
    end = data.find(b"\r\n\r\n")
    return not data[: end if end >= 0 else len(data)].isascii()


def _reply_error(exc: smtplib.SMTPResponseException, step: str, what: str) -> TransportError:
    reply = Reply.parse(exc.smtp_code, exc.smtp_error)
    permanent = exc.smtp_code >= 500
    return TransportError(f"{what}: {reply}", permanent=permanent, step=step, reply=reply)


class SMTPTransport(Transport):
    """One SMTP submission connection to a mail server."""

    name = "smtp"

    def __init__(
        self,
        endpoint: Endpoint,
        credential: Credential | None = None,
        *,
        timeout: float = 30.0,
        local_hostname: str | None = None,
        pipelining: bool = True,
        chunking: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.credential = credential
        self.timeout = timeout
        self.local_hostname = local_hostname
        self.connection: smtplib.SMTP | None = None
        self._ready = False
        self.token_requests = 0
        self.greeting = Reply()
        # Pipeline MAIL/RCPT/DATA when the server offers PIPELINING; False always goes step by step.
        self.pipelining = pipelining
        # Send content with BDAT when the server offers CHUNKING (and PIPELINING).
        self.chunking = chunking
        # Whether this connection's server handled BDAT (None: not tried yet).
        self._bdat: bool | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._ready and self.connection is not None

    def close(self) -> None:
        connection, self.connection = self.connection, None
        self._ready = False
        if connection is not None:
            close_quietly(connection.quit, connection.close, (smtplib.SMTPException,))

    # -- steps -------------------------------------------------------------------------------

    def connect(self) -> Reply:
        """Open the TCP connection (TLS first for implicit TLS), read the greeting and send EHLO."""
        if not self.endpoint.host:
            raise TransportError(
                "the server has no SMTP Server host name", permanent=True, step="connect"
            )
        security = self.endpoint.security
        if security not in ("starttls", "ssl", "none"):
            raise TransportError(
                f"unknown Connection Security {security!r}", permanent=True, step="connect"
            )
        connection: smtplib.SMTP
        try:
            if security == "ssl":
                connection = smtplib.SMTP_SSL(
                    timeout=self.timeout,
                    local_hostname=self.local_hostname,
                    context=tls_context(self.credential),
                )
            else:
                connection = smtplib.SMTP(timeout=self.timeout, local_hostname=self.local_hostname)
            # smtplib takes the TLS server name (certificate host check) from _host, which only
            # its constructor sets; connect() is called separately here to keep the steps apart.
            connection._host = self.endpoint.host  # type: ignore[attr-defined]
            code, message = connection.connect(self.endpoint.host, self.endpoint.port)
        except ssl.SSLCertVerificationError as exc:
            raise self.untrusted(exc) from None
        except ssl.SSLError as exc:
            raise TransportError(f"TLS with {self.address} failed: {exc}", step="tls") from None
        except smtplib.SMTPConnectError as exc:
            raise _reply_error(exc, "connect", f"{self.address} refused the connection") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransportError(
                f"cannot connect to {self.address}: {exc or type(exc).__name__}", step="connect"
            ) from None
        self.connection = connection
        self._bdat = None
        # Pipelined writes are whole commands or content; do not let Nagle's algorithm hold the
        # short ones (the final ".") back waiting for the server's acknowledgement.
        if connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.greeting = Reply.parse(code, message)
        self._ehlo()
        return self.greeting

    def _ehlo(self) -> Reply:
        connection = self._require()
        try:
            code, message = connection.ehlo()
            if not 200 <= code < 300:
                code, message = connection.helo()
        except smtplib.SMTPServerDisconnected as exc:
            raise TransportError(
                f"{self.address} closed the connection: {exc}", step="connect"
            ) from None
        except OSError as exc:
            raise TransportError(f"{self.address}: {exc}", step="connect") from None
        reply = Reply.parse(code, message)
        if not reply.is_success:
            raise TransportError(
                f"{self.address} refused EHLO/HELO: {reply}",
                permanent=code >= 500,
                step="connect",
                reply=reply,
            )
        return reply

    def starttls(self) -> Reply:
        """Upgrade with STARTTLS (verifying the certificate and host name) and repeat EHLO."""
        connection = self._require()
        if not connection.has_extn("starttls"):
            raise TransportError(
                f"{self.address} does not offer STARTTLS: choose another Connection Security",
                permanent=True,
                step="tls",
            )
        try:
            code, message = connection.starttls(context=tls_context(self.credential))
        except ssl.SSLCertVerificationError as exc:
            raise self.untrusted(exc) from None
        except smtplib.SMTPResponseException as exc:
            raise _reply_error(exc, "tls", f"{self.address} refused STARTTLS") from None
        except (ssl.SSLError, OSError, smtplib.SMTPException) as exc:
            raise TransportError(
                f"STARTTLS with {self.address} failed: {exc}", step="tls"
            ) from None
        self._ehlo()
        return Reply.parse(code, message)

    @property
    def is_encrypted(self) -> bool:
        return self.connection is not None and isinstance(
            getattr(self.connection, "sock", None), ssl.SSLSocket
        )

    def auth_mechanisms(self) -> list[str]:
        connection = self._require()
        return [m.upper() for m in connection.esmtp_features.get("auth", "").split()]

    def _require_mechanism(self, *names: str) -> str:
        offered = self.auth_mechanisms()
        for name in names:
            if name in offered:
                return name
        where = "before STARTTLS" if not self.is_encrypted else ""
        raise TransportError(
            f"{self.address} does not offer AUTH {' or '.join(names)} {where}".rstrip()
            + f" (offers: {' '.join(offered) or 'no AUTH at all'})",
            permanent=True,
            step="auth",
        )

    def _auth_bearer(self, credential: BearerToken) -> Reply:
        mechanism = self._require_mechanism("XOAUTH2", "OAUTHBEARER")
        self.token_requests += 1
        response = bearer_response(mechanism, credential.username, credential.get_token())
        sent: list[bool] = []

        def answer(challenge: bytes | None = None) -> str:
            # After a failed token the server sends an error challenge (base64 JSON); the client
            # must answer it with an empty line to get the final 535.
            # Reference: https://developers.google.com/gmail/imap/xoauth2-protocol#error_response
            if sent:
                return ""
            sent.append(True)
            return response

        inline = len(base64.b64encode(response.encode())) <= MAX_INITIAL_RESPONSE
        return self._auth(mechanism, answer, initial_response_ok=inline)

    def _auth_password(self, credential: Password) -> Reply:
        connection = self._require()
        mechanism = self._require_mechanism("PLAIN", "LOGIN")
        connection.user = credential.username
        connection.password = credential.password
        try:
            if mechanism == "PLAIN":
                return self._auth("PLAIN", connection.auth_plain, initial_response_ok=True)
            return self._auth("LOGIN", connection.auth_login, initial_response_ok=False)
        finally:
            connection.password = ""

    def _auth(self, mechanism: str, answer: object, *, initial_response_ok: bool) -> Reply:
        connection = self._require()
        try:
            code, message = connection.auth(
                mechanism,
                answer,  # type: ignore[arg-type]
                initial_response_ok=initial_response_ok,
            )
        except smtplib.SMTPAuthenticationError as exc:
            raise _reply_error(exc, "auth", "authentication failed") from None
        except smtplib.SMTPServerDisconnected as exc:
            raise TransportError(
                f"{self.address} closed the connection during AUTH: {exc}", step="auth"
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransportError(f"AUTH {mechanism} failed: {exc}", step="auth") from None
        return Reply.parse(code, message)

    def mail(
        self,
        sender: str,
        *,
        size: int | None = None,
        eight_bit: bool = False,
        smtputf8: bool = False,
    ) -> Reply:
        """MAIL FROM with SIZE, BODY=8BITMIME and SMTPUTF8 when asked for and the server supports
        them (smtplib then writes the commands of the transaction in UTF-8)."""
        connection = self._require()
        options = self._mail_options(size, eight_bit, smtputf8)
        return self._command("mail", lambda: connection.mail(sender, options), "MAIL FROM")

    def _mail_options(self, size: int | None, eight_bit: bool, smtputf8: bool = False) -> list[str]:
        connection = self._require()
        options = []
        if size is not None and connection.has_extn("size"):
            options.append(f"SIZE={size}")
        if eight_bit and connection.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if smtputf8 and connection.has_extn("smtputf8"):
            options.append("SMTPUTF8")
        return options

    def _smtputf8(self, envelope: Envelope) -> bool:
        """Whether the transaction asks for SMTPUTF8 (RFC 6531): when the server offers it and an
        address or a header is UTF-8. An address that is not ASCII cannot travel without it: a
        server that does not offer SMTPUTF8 gets a permanent TransportError naming the address."""
        connection = self._require()
        offered = connection.has_extn("smtputf8")
        address = non_ascii_address(envelope)
        if address and not offered:
            raise TransportError(
                f"{self.address} does not offer SMTPUTF8, which the address {address} needs "
                "(RFC 6531: a local part that is not ASCII travels only with SMTPUTF8): this "
                "server cannot deliver the message; send it from and to ASCII addresses, or "
                "through a server that offers SMTPUTF8",
                permanent=True,
                step="mail",
            )
        return offered and bool(address or has_utf8_headers(envelope.data))

    def rcpt(self, recipient: str) -> Reply:
        connection = self._require()
        return self._command("rcpt", lambda: connection.rcpt(recipient), f"RCPT TO <{recipient}>")

    def data(self, data: bytes) -> Reply:
        connection = self._require()
        return self._command("data", lambda: connection.data(data), "DATA")

    def abort(self) -> Reply:
        """RSET: drop the transaction in progress (used after a refusal and by the connection test)."""
        connection = self._require()
        return self._command("rset", connection.rset, "RSET")

    def _command(self, step: str, call: object, what: str) -> Reply:
        try:
            code, message = call()  # type: ignore[operator]
        except smtplib.SMTPResponseException as exc:
            raise _reply_error(exc, step, f"{what} refused") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise self._broken(exc, step, what) from None
        return self._checked(Reply.parse(code, message), step, what)

    @staticmethod
    def _checked(reply: Reply, step: str, what: str) -> Reply:
        """The reply when it is a success; a TransportError naming the step when it is not."""
        if not reply.is_success:
            raise TransportError(
                f"{what} refused: {reply}",
                permanent=(reply.code or 0) >= 500,
                step=step,
                reply=reply,
            )
        return reply

    def _broken(self, exc: BaseException, step: str, what: str) -> TransportError:
        """The connection is gone or out of step: forget it and say where it broke."""
        self._lost()
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return TransportError(
                f"{self.address} closed the connection at {what}: {exc}", step=step
            )
        return TransportError(f"{what} to {self.address} failed: {exc}", step=step)

    def _read_reply(self, step: str, what: str) -> Reply:
        """The next reply of a pipelined group, whatever its code but 421.

        421 means the server is closing the connection (RFC 5321 section 3.8): no further reply
        will come, so it ends the group as a transient error carrying the reply.
        """
        connection = self._require()
        try:
            code, message = connection.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            # SMTPResponseException here means a malformed reply: the stream is out of step.
            raise self._broken(exc, step, what) from None
        reply = Reply.parse(code, message)
        if code == 421:
            self._lost()
            raise TransportError(f"{what} refused: {reply}", step=step, reply=reply)
        return reply

    def _write(self, data: bytes, step: str, what: str) -> None:
        connection = self._require()
        try:
            connection.send(data)
        except (OSError, smtplib.SMTPException) as exc:
            raise self._broken(exc, step, what) from None

    def _ack_promptly(self) -> None:
        """Have the kernel acknowledge the server's replies as they arrive, until this side sends again.

        Call it after the last write of a pipelined group, before reading the group's replies.
        A server may answer one group in several writes: Postfix sends the replies it holds each
        time its 4 KB input buffer runs dry, so the MAIL FROM and RCPT TO replies leave while it is
        still reading the BDAT chunk, and the rest follows once BDAT LAST is done. If the server
        does not turn Nagle's algorithm off (Postfix does not), each later write waits until the
        earlier one is acknowledged, and a client that is only waiting, sending nothing, delays
        its acknowledgement (up to 40 ms on Linux): about 44 ms per message, whatever the machine.
        TCP_QUICKACK ends the delay; the kernel restores delayed acknowledgements when this side
        sends again, so it is set for each group. Without TCP_QUICKACK (not Linux) BDAT is not
        used, see _send_pipelined; DATA's replies come in one write per round trip.
        """
        connection = self.connection
        if TCP_QUICKACK is None or connection is None or connection.sock is None:
            return
        with contextlib.suppress(OSError):
            connection.sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)

    def _lost(self) -> None:
        connection, self.connection = self.connection, None
        self._ready = False
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.close()

    def _require(self) -> smtplib.SMTP:
        if self.connection is None:
            raise TransportError("not connected", step="connect")
        return self.connection

    # -- sending -----------------------------------------------------------------------------

    def send_message(
        self, envelope: Envelope, *, before_data: Callable[[], object] | None = None
    ) -> SendResult:
        """Submit one envelope; refusals come back in the result, a lost connection raises.

        `before_data` runs before the message can be completed (step by step: once the recipients
        are accepted, before DATA; pipelined: with the content sent but before the final "." or
        BDAT LAST). If it raises, nothing is delivered (the transaction is reset, or the connection
        dropped when pipelined) and its exception propagates.

        When the server offers PIPELINING (RFC 2920; Exchange Online, Gmail and Postfix do), MAIL
        FROM and every RCPT TO go out in one write with DATA (two round trips per message) or, with
        CHUNKING, with the content as BDAT (one round trip); see _send_pipelined.
        """
        self.open()
        started = time.monotonic()
        result = SendResult(envelope)
        try:
            smtputf8 = self._smtputf8(envelope)
        except TransportError as exc:
            result.error = exc
            result.duration = time.monotonic() - started
            return result
        commands = self._envelope_commands(envelope, smtputf8=smtputf8)
        if commands is not None:
            try:
                self._send_pipelined(envelope, commands, before_data, result)
            finally:
                result.duration = time.monotonic() - started
            return result
        try:
            self.mail(
                envelope.mail_from,
                size=len(envelope.data),
                eight_bit=not envelope.data.isascii(),
                smtputf8=smtputf8,
            )
            accepted = 0
            first_refusal: TransportError | None = None
            for recipient in envelope.recipients:
                try:
                    self.rcpt(recipient)
                    accepted += 1
                except TransportError as exc:
                    if self.connection is None:
                        raise
                    result.refused[recipient] = exc.reply
                    first_refusal = _to_report(first_refusal, exc)
            if not accepted:
                assert first_refusal is not None
                self._reset_quietly()
                result.error = first_refusal
                return result
            if before_data is not None:
                try:
                    before_data()
                except BaseException:
                    self._reset_quietly()
                    raise
            result.reply = self.data(envelope.data)
            result.queue_id = parse_queue_id(result.reply.text)
        except TransportError as exc:
            if self.connection is None:
                raise
            if exc.step == "mail":
                self._reset_quietly()
            result.error = exc
        finally:
            result.duration = time.monotonic() - started
        return result

    def _envelope_commands(self, envelope: Envelope, *, smtputf8: bool = False) -> bytes | None:
        """MAIL FROM and every RCPT TO as one write, or None to go step by step.

        Step by step when the server does not offer PIPELINING, when pipelining is turned off, or
        when an address is not plain ASCII outside an SMTPUTF8 transaction (smtplib's own commands
        then decide what is possible). Addresses were validated at enqueue time, so they go in
        angle brackets as they are; with SMTPUTF8 the commands are UTF-8 (RFC 6531 section 3.3).
        """
        connection = self._require()
        if not self.pipelining or not connection.has_extn("pipelining"):
            return None
        options = self._mail_options(len(envelope.data), not envelope.data.isascii(), smtputf8)
        commands = [" ".join([f"MAIL FROM:<{envelope.mail_from}>", *options])]
        commands += [f"RCPT TO:<{rcpt}>" for rcpt in envelope.recipients]
        text = "".join(f"{command}\r\n" for command in commands)
        addresses = [envelope.mail_from, *envelope.recipients]
        if any(c in address for address in addresses for c in "\r\n<>"):
            return None
        if "SMTPUTF8" in options:
            return text.encode("utf-8")
        if not text.isascii():
            return None
        return text.encode("ascii")

    def _send_pipelined(
        self,
        envelope: Envelope,
        commands: bytes,
        before_data: Callable[[], object] | None,
        result: SendResult,
    ) -> None:
        """One pipelined transaction (RFC 2920 section 3.1: every reply of the group is checked).

        With CHUNKING (RFC 3030; Exchange Online, Gmail and Postfix offer it) the content goes as
        BDAT, which needs no dot-stuffing and no 354 round trip; a server that advertises CHUNKING
        but turns out not to know BDAT gets DATA for the rest of the connection. BDAT needs
        TCP_QUICKACK (see _ack_promptly): where the system has none, DATA is used.
        """
        connection = self._require()
        if self._bdat is None and self.address in _WITHOUT_BDAT:
            self._bdat = False
        if (
            self.chunking
            and TCP_QUICKACK is not None
            and self._bdat is not False
            and connection.has_extn("chunking")
        ):
            if self._bdat is None:
                # Whether this server knows BDAT, asked without a transaction and with no bytes a
                # server could mistake for commands: one that does answers 503 (bad sequence of
                # commands), one that does not answers 500/502 (unknown command).
                try:
                    self._write(b"BDAT 0 LAST\r\n" + commands, "data", "BDAT")
                    self._ack_promptly()
                    probe = self._read_reply("data", "BDAT")
                except TransportError:
                    # A server that hangs up on the question would do so on every retry: it gets
                    # DATA from now on.
                    _WITHOUT_BDAT.add(self.address)
                    raise
                self._bdat = probe.is_success or probe.code == 503
                if not self._bdat:
                    _WITHOUT_BDAT.add(self.address)
                    log.info(
                        "%s advertises CHUNKING but answered BDAT with %s: DATA from now on",
                        self.address,
                        probe,
                    )
                commands = b""  # already sent
            if self._bdat:
                self._send_bdat(envelope, commands, before_data, result)
                return
        self._send_data(envelope, commands, before_data, result)

    def _envelope_replies(
        self, envelope: Envelope, result: SendResult
    ) -> tuple[Reply, int, TransportError | None]:
        """Read MAIL FROM's and each RCPT TO's reply: (MAIL reply, recipients accepted, the refusal
        to report if none was: a temporary one rather than a permanent one)."""
        mail = self._read_reply("mail", "MAIL FROM")
        accepted = 0
        first_refusal: TransportError | None = None
        for recipient in envelope.recipients:
            reply = self._read_reply("rcpt", f"RCPT TO <{recipient}>")
            if reply.is_success:
                accepted += 1
                continue
            refusal = TransportError(
                f"RCPT TO <{recipient}> refused: {reply}",
                permanent=(reply.code or 0) >= 500,
                step="rcpt",
                reply=reply,
            )
            if mail.is_success:
                result.refused[recipient] = reply
            first_refusal = _to_report(first_refusal, refusal)
        return mail, accepted, first_refusal

    def _no_transaction(
        self, mail: Reply, accepted: int, first_refusal: TransportError | None, result: SendResult
    ) -> bool:
        """True (with result.error set) when the sender or every recipient was refused."""
        if mail.is_success and accepted:
            return False
        if not mail.is_success:
            result.error = self._failed(mail, "mail", "MAIL FROM")
        else:
            assert first_refusal is not None
            result.error = first_refusal
        return True

    def _run_before_data(self, before_data: Callable[[], object] | None) -> None:
        """Run the caller's hook with the content out but the transaction not yet complete; if it
        raises, drop the connection so that the server discards the transaction."""
        if before_data is None:
            return
        try:
            before_data()
        except BaseException:
            self._lost()
            raise

    def _final_reply(self, result: SendResult, what: str) -> None:
        try:
            result.reply = self._checked(self._read_reply("data", what), "data", what)
        except TransportError as exc:
            if self.connection is None:
                raise
            result.error = exc
            return
        result.queue_id = parse_queue_id(result.reply.text)

    def _send_data(
        self,
        envelope: Envelope,
        commands: bytes,
        before_data: Callable[[], object] | None,
        result: SendResult,
    ) -> None:
        """MAIL/RCPT/DATA in one write; then the content, and its final "." once `before_data` has
        returned: the server reads the content while the caller finishes its own work (the outbox
        commits the previous message's outcome), and until the "." nothing can be delivered
        (RFC 5321 section 4.1.1.4)."""
        self._write(commands + b"DATA\r\n", "mail", "MAIL FROM")
        self._ack_promptly()
        mail, accepted, first_refusal = self._envelope_replies(envelope, result)
        data = self._read_reply("data", "DATA")
        go_ahead = data.code == 354
        if self._no_transaction(mail, accepted, first_refusal, result):
            if go_ahead:
                # DATA was accepted with no valid transaction to carry it. Ending it with an empty
                # body could still deliver an empty message on a confused server; dropping the
                # connection mid-DATA makes the server discard the transaction.
                self._lost()
            else:
                self._reset_quietly()
            return
        if not go_ahead:
            result.error = self._failed(data, "data", "DATA")
            return
        self._write(_dot_stuffed(envelope.data), "data", "the message content")
        self._run_before_data(before_data)
        self._write(END_OF_DATA, "data", "the end of the message content")
        self._ack_promptly()
        self._final_reply(result, "DATA")

    def _send_bdat(
        self,
        envelope: Envelope,
        commands: bytes,
        before_data: Callable[[], object] | None,
        result: SendResult,
    ) -> None:
        """MAIL/RCPT and the whole content as one BDAT chunk in one write, then "BDAT 0 LAST" once
        `before_data` has returned (until LAST nothing can be delivered, RFC 3030 section 2): one
        round trip per message. A refused transaction makes the server refuse both chunks. The
        replies come in more than one write from some servers (_ack_promptly says why that costs
        40 ms per message unless acknowledged at once)."""
        chunk = b"BDAT %d\r\n" % len(envelope.data) + envelope.data
        self._write(commands + chunk, "data", "BDAT")
        self._run_before_data(before_data)
        self._write(b"BDAT 0 LAST\r\n", "data", "BDAT LAST")
        self._ack_promptly()
        mail, accepted, first_refusal = self._envelope_replies(envelope, result)
        body = self._read_reply("data", "BDAT")
        if self._no_transaction(mail, accepted, first_refusal, result):
            self._read_reply("data", "BDAT LAST")
            self._reset_quietly()
            return
        if not body.is_success:
            self._read_reply("data", "BDAT LAST")
            result.error = self._failed(body, "data", "BDAT")
            self._reset_quietly()
            return
        self._final_reply(result, "BDAT LAST")

    def _failed(self, reply: Reply, step: str, what: str) -> TransportError:
        try:
            self._checked(reply, step, what)
        except TransportError as exc:
            return exc
        return TransportError(f"{what}: unexpected reply {reply}", step=step, reply=reply)

    def _reset_quietly(self) -> None:
        with contextlib.suppress(TransportError):
            self.abort()

    def send_messages(self, envelopes: list[Envelope]) -> list[SendResult]:
        return [self.send_message(envelope) for envelope in envelopes]
