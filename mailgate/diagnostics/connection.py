"""Test Connection: every step a real send or fetch would take, stopping before anything is sent.

OAuth: refresh the token. Outgoing: connect, TLS (verified), authenticate, MAIL FROM, RCPT TO,
DATA, then drop the connection before the message ends, so nothing is sent. Incoming: connect,
TLS, authenticate, select the folder (IMAP) or STAT (POP3). The result names the failing step,
the server's exact reply and a diagnosis.
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from django.utils import timezone

from mailgate import providers
from mailgate.connections import imap_transport, pop3_transport, smtp_transport
from mailgate.oauth.tokens import refresh_access_token, release_held_mail
from mailgate.providers.errors import TokenError
from mailgate.providers.replies import diagnose_reply
from mailgate.servers.models import MailServer, ServerStatus
from mailgate.transports.base import Reply, TransportError
from mailgate.transports.smtp import SMTPTransport

log = logging.getLogger("mailgate.diagnostics")

TIMEOUT_SECONDS = 15.0
SUCCESS = "Connection test succeeded"
FAILURE = "Connection test failed"


@dataclass
class Step:
    """One step of the test: its name, outcome, the server's reply (or the error), and a diagnosis."""

    name: str
    ok: bool
    detail: str = ""
    diagnosis: str = ""

    def line(self) -> str:
        mark = "ok" if self.ok else "FAILED"
        return f"[{mark}] {self.name}: {self.detail}".rstrip(": ")


@dataclass
class TestResult:
    """The outcome of a connection test; `failed` is the step that stopped it, if any."""

    __test__ = False  # not a pytest test class

    server: str
    steps: list[Step] = field(default_factory=list)

    @property
    def failed(self) -> Step | None:
        return next((s for s in self.steps if not s.ok), None)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and self.failed is None

    @property
    def headline(self) -> str:
        failed = self.failed
        if failed is None:
            return f"{SUCCESS}."
        return f"{FAILURE} at step {failed.name!r}: {failed.detail}"

    def summary(self) -> str:
        """The steps, one a line, and the diagnosis of the failing one."""
        lines = [s.line() for s in self.steps]
        failed = self.failed
        if failed and failed.diagnosis:
            lines.append(f"Diagnosis: {failed.diagnosis}")
        return "\n".join(lines)


class _Stop(Exception):
    """A step failed; the test ends there."""


class _Runner:
    def __init__(self, server: MailServer, result: TestResult) -> None:
        self.server = server
        self.result = result

    def step(self, name: str, action: Callable[[], str]) -> str:
        try:
            detail = action()
        except TransportError as exc:
            self.fail(name, exc, exc.reply)
        except TokenError as exc:
            self.result.steps.append(
                Step(name, False, str(exc), exc.diagnosis or self._diagnose(str(exc)))
            )
            raise _Stop from None
        except Exception as exc:  # an unexpected failure still ends as a named, failed step
            log.exception("connection test step %r of %s crashed", name, self.server.name)
            text = f"{type(exc).__name__}: {exc}"
            self.result.steps.append(Step(name, False, text, self._diagnose(text)))
            raise _Stop from None
        self.result.steps.append(Step(name, True, detail))
        return detail

    def fail(self, name: str, exc: TransportError, reply: Reply) -> None:
        detail = str(reply) if reply.code or reply.text else str(exc)
        if reply.text and str(exc) not in detail:
            detail = f"{detail} ({exc})" if detail != str(exc) else detail
        diagnosis = (
            exc.diagnosis
            or (self._missing_scopes() if exc.step == "auth" else "")
            or self._diagnose(f"{reply} {exc}")
        )
        self.result.steps.append(Step(name, False, detail, diagnosis))
        raise _Stop from None

    def _missing_scopes(self) -> str:
        """When the stored grant lacks a scope this server now needs (e.g. Incoming Mail was enabled
        after connecting), say so: the provider refuses such tokens."""
        if not self.server.is_oauth:
            return ""
        from mailgate.oauth.models import Grant
        from mailgate.oauth.tokens import flow_for

        grant = Grant.objects.filter(server_id=self.server.pk).first()
        if grant is None:
            return ""
        held = {scope_name(s) for s in grant.scope_list()}
        missing = [
            s
            for s in flow_for(self.server).required_scopes(self.server)
            if scope_name(s) not in held
        ]
        if not missing:
            return ""
        label = providers.get(self.server.provider_key or "").connect_label
        return (
            f"Permissions missing: the connected account granted no {', '.join(missing)} (the "
            f"server's settings changed after it was connected). Fix: press {label} again and "
            "accept the permissions."
        )

    def _diagnose(self, text: str) -> str:
        found = diagnose_reply(self.server.provider_key, text)
        return found.as_text() if found else ""


def scope_name(scope: str) -> str:
    """A scope's comparable name: https://outlook.office.com/SMTP.Send -> smtp.send."""
    return scope.rstrip("/").rsplit("/", 1)[-1].lower()


def _tls_note(sock: object, host: str) -> str:
    if isinstance(sock, ssl.SSLSocket):
        return f"{sock.version()}, certificate verified for {host}"
    return "not encrypted (Connection Security is None)"


def _smtp_steps(run: _Runner, server: MailServer) -> None:
    transport = smtp_transport(server, timeout=TIMEOUT_SECONDS)
    try:
        run.step(f"SMTP connect {transport.address}", lambda: str(transport.connect()))
        if server.smtp_security == "starttls":
            run.step("SMTP STARTTLS", lambda: str(transport.starttls()) or "ok")
        run.step(
            "SMTP TLS",
            lambda: _tls_note(getattr(transport.connection, "sock", None), server.smtp_host),
        )
        mechanism = "XOAUTH2" if server.is_oauth else "password"
        if server.auth_method == "certificate":
            mechanism = "client certificate"
        run.step(
            f"SMTP authenticate ({mechanism})",
            lambda: str(transport.authenticate()) or "no AUTH needed (client certificate)",
        )
        sender = server.username or (server.from_filter_entries() or [""])[0]
        run.step(f"SMTP MAIL FROM <{sender}>", lambda: str(transport.mail(sender)))
        run.step(f"SMTP RCPT TO <{sender}>", lambda: str(transport.rcpt(sender)))
        run.step("SMTP DATA (aborted, nothing sent)", lambda: _data_then_drop(transport))
    finally:
        transport.close()


def _data_then_drop(transport: SMTPTransport) -> str:
    """Send DATA, expect 354, then drop the connection: without the final "." nothing is sent."""
    connection = transport.connection
    if connection is None:
        raise TransportError("not connected", step="data")
    try:
        code, message = connection.docmd("DATA")
    except (smtplib.SMTPException, OSError) as exc:
        raise TransportError(f"DATA failed: {exc}", step="data") from None
    reply = Reply.parse(code, message)
    transport.connection = None
    with contextlib.suppress(OSError):
        connection.close()
    if code != 354:
        raise TransportError(
            f"DATA refused: {reply}", permanent=code >= 500, step="data", reply=reply
        )
    return str(reply)


def _imap_steps(run: _Runner, server: MailServer) -> None:
    transport = imap_transport(server, timeout=TIMEOUT_SECONDS)
    try:
        run.step(f"IMAP connect {transport.address}", lambda: str(transport.connect()) or "ok")
        if server.incoming_security == "starttls":
            run.step("IMAP STARTTLS", lambda: str(transport.starttls()) or "ok")
        run.step(
            "IMAP TLS",
            lambda: _tls_note(
                getattr(getattr(transport.connection, "_imap", None), "sock", None),
                server.incoming_host,
            ),
        )
        method = "XOAUTH2" if server.is_oauth else "password"
        run.step(f"IMAP authenticate ({method})", lambda: str(transport.authenticate()) or "ok")
        for folder in server.folder_list():
            run.step(
                f"IMAP select folder {folder}",
                lambda folder=folder: str(transport.select_folder(folder)),  # type: ignore[misc]
            )
    finally:
        transport.close()


def _pop3_steps(run: _Runner, server: MailServer) -> None:
    transport = pop3_transport(server, timeout=TIMEOUT_SECONDS)
    try:
        run.step(f"POP3 connect {transport.address}", lambda: str(transport.connect()) or "ok")
        if server.incoming_security == "starttls":
            run.step("POP3 STLS", lambda: str(transport.starttls()) or "ok")
        run.step(
            "POP3 TLS",
            lambda: _tls_note(getattr(transport.connection, "sock", None), server.incoming_host),
        )
        method = "XOAUTH2" if server.is_oauth else "password"
        run.step(f"POP3 authenticate ({method})", lambda: str(transport.authenticate()) or "ok")
        run.step("POP3 open mailbox (STAT)", lambda: str(transport.stat()))
    finally:
        transport.close()


def _token_step(server: MailServer) -> str:
    refresh_access_token(server.pk, reuse_fresh=False)
    from mailgate.oauth.models import Grant

    grant = Grant.objects.get(server_id=server.pk)
    return (
        f"refreshed; access token valid until {grant.access_expires_at:%Y-%m-%d %H:%M:%S} UTC; "
        f"scopes: {' '.join(grant.scope_list())}"
    )


def run_connection_test(server: MailServer) -> TestResult:
    """Run every applicable step, record the outcome on the server, and return it."""
    server.refresh_from_db()
    result = TestResult(server.name)
    run = _Runner(server, result)
    try:
        if server.is_oauth:
            run.step("Refresh access token", lambda: _token_step(server))
            server.refresh_from_db()
        if not server.has_outgoing and not server.has_incoming:
            result.steps.append(
                Step(
                    "Configuration",
                    False,
                    "no SMTP Server and no Incoming Mail configured",
                    "Enter the SMTP Server (and/or choose an Incoming Mail protocol), then Save.",
                )
            )
            raise _Stop
        if server.has_outgoing:
            _smtp_steps(run, server)
        if server.incoming_protocol == "imap":
            _imap_steps(run, server)
        elif server.incoming_protocol == "pop3":
            _pop3_steps(run, server)
    except _Stop:
        pass
    _record(server, result)
    return result


def _record(server: MailServer, result: TestResult) -> None:
    now = timezone.now()
    updates: dict[str, object] = {
        "last_test_at": now,
        "last_test_ok": result.ok,
        "last_test_summary": result.summary(),
    }
    failed = result.failed
    if result.ok:
        updates["status"] = ServerStatus.TOKEN_VALID if server.is_oauth else ServerStatus.READY
        updates["status_detail"] = ""
    elif failed is not None and not failed.name.startswith("Refresh"):
        # Token failures have already set Reconnect required / Failing with their diagnosis.
        updates["status"] = ServerStatus.FAILING
        updates["status_detail"] = result.headline + (
            f" {failed.diagnosis}" if failed.diagnosis else ""
        )
    MailServer.objects.filter(pk=server.pk).update(**updates)
    for name, value in updates.items():
        setattr(server, name, value)
    log.info("connection test of %s: %s", server.name, result.headline)
    if result.ok:
        release_held_mail(server)
